"""The planner: a topology in, worker launch specs and a gateway config out.

planner.py places workers and checks ports; cores.py allocates NeuronCores/GPUs;
launch.py builds each worker's command line and environment; cli.py is `pd-gateway plan`.
"""

from workers.plan.planner import Plan, PlanError, PoolRoute, WorkerSpec, plan

__all__ = ["Plan", "PlanError", "PoolRoute", "WorkerSpec", "plan"]
