"""The ``fastast-deploy`` command line: the click group (``main``), one module of commands per stage
(``commands``), and the pipelines that several commands run (``quickstart``, ``info``)."""
