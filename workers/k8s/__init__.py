"""The Kubernetes half of the launch layer: one Job per step attempt.

- :mod:`workers.k8s.config`: the ``k8s`` block of the executors' config;
- :mod:`workers.k8s.overrides`: the tag ``coreexec-k8s/config`` and the deep merge;
- :mod:`workers.k8s.schema`: Kubernetes JSON checked against the client's models;
- :mod:`workers.k8s.manifest`: the Job of an attempt (name, labels, pod, container);
- :mod:`workers.k8s.api`: the API calls, with timeouts, retries and a creation cap;
- :mod:`workers.k8s.pod_watch`: one watch per process and namespace for every attempt;
- :mod:`workers.k8s.pod_state` and :mod:`workers.k8s.follow`: what a pod's status
  means, and when an attempt has ended;
- :mod:`workers.k8s.launcher`: the ``k8s`` :class:`~workers.launcher.StepLauncher`;
- :mod:`workers.k8s.executor`: ``k8s_job_executor`` (the coordinator launches Jobs);
- ``workers/k8s/*.yaml``: manifests of a fleet on Kubernetes (workers, coordinators, RBAC).

Only these modules import the ``kubernetes`` client (the ``kubernetes`` extra).
"""
