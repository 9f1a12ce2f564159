"""The budget planner: "I have N MB -- what can I train, and how well?"

- :mod:`~tinytl_core.planner.budget` -- :func:`parse_budget` ("256KB", "0.5 GB", "300" = MB; KB = 10^3),
  :data:`PRESETS` (MCU SRAM, a 512 MB board, a phone app, a 4 GB edge GPU), :class:`Budget`;
- :mod:`~tinytl_core.planner.profile` -- :class:`MemoryProfile`: one (backbone, resolution, mode) at every
  batch size from two ``meta`` traces, :class:`ProfileCache` (memory + versioned JSON files on disk);
- :mod:`~tinytl_core.planner.plan` -- :class:`SearchSpace`, :func:`plan` -> :class:`Plan` (configurations,
  what fits, per backbone x mode the largest batch and resolution that fit), :func:`pareto_front`;
- :mod:`~tinytl_core.planner.accuracy` -- measured accuracy (mean and spread over seeds) per configuration;
- :mod:`~tinytl_core.planner.export` -- :func:`training_plan`: one configuration as a JSON training plan.
"""
