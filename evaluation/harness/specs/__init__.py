"""One :class:`~..task_spec.TaskSpec` per task: how its predictions become records, metrics and pictures."""
