"""Job references: ``"package.module:attribute"`` strings that any process can load.

Cross-process executors send the reference, never pickled code. Accepted forms:

* ``package.module:job_attr`` — a ``@job`` at module level;
* ``package.module:defs.job_name`` — a job of a :class:`Definitions` attribute
  (``package.module:defs`` alone when it holds exactly one job);
* ``path/to/file.py:attr`` — the same, from a file (every process must see the path).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
from pathlib import Path
from types import ModuleType

from coreexec.definitions import Definitions
from coreexec.errors import JobReferenceError
from coreexec.job import JobDefinition

_cache: dict[str, JobDefinition] = {}
_cache_lock = threading.Lock()


def _split(reference: str) -> tuple[str, str]:
    module_part, sep, attr_part = reference.rpartition(":")
    if not sep or not module_part or not attr_part:
        raise JobReferenceError(
            f"job reference {reference!r} must look like 'package.module:attribute' "
            "(or 'path/to/file.py:attribute')",
            reference=reference,
        )
    return module_part, attr_part


def _import_file(path_text: str, reference: str) -> ModuleType:
    path = Path(path_text).resolve()
    if not path.is_file():
        raise JobReferenceError(
            f"job reference {reference!r}: no file {str(path)!r}; check the path",
            reference=reference,
        )
    module_name = f"coreexec_user_{path.stem}_{abs(hash(str(path))) & 0xFFFFFF:x}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise JobReferenceError(
            f"job reference {reference!r}: {str(path)!r} cannot be imported as Python",
            reference=reference,
        )
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise JobReferenceError(
            f"job reference {reference!r}: importing {str(path)!r} failed: {exc!r}",
            reference=reference,
        ) from exc
    return module


def _import_module(module_name: str, reference: str) -> ModuleType:
    if module_name.endswith(".py") or "/" in module_name:
        return _import_file(module_name, reference)
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise JobReferenceError(
                f"job reference {reference!r}: module {exc.name!r} not found; check the "
                "spelling, that its package is installed, and that it is on PYTHONPATH "
                "for every process that runs steps",
                reference=reference,
            ) from exc
        raise JobReferenceError(
            f"job reference {reference!r}: module {module_name!r} imports {exc.name!r}, "
            "which is not installed",
            reference=reference,
        ) from exc
    except Exception as exc:
        raise JobReferenceError(
            f"job reference {reference!r}: importing module {module_name!r} failed: {exc!r}",
            reference=reference,
        ) from exc


def _jobs_in(module: ModuleType) -> list[str]:
    return sorted(
        name
        for name, value in vars(module).items()
        if isinstance(value, JobDefinition | Definitions)
    )


def _resolve(module: ModuleType, attr_path: str, reference: str) -> JobDefinition:
    head, _, job_name = attr_path.partition(".")
    if not hasattr(module, head):
        known = ", ".join(_jobs_in(module)) or "none"
        raise JobReferenceError(
            f"job reference {reference!r}: module {module.__name__!r} has no attribute "
            f"{head!r}; jobs and Definitions there: {known}",
            reference=reference,
        )
    target = getattr(module, head)
    if isinstance(target, Definitions):
        if job_name:
            try:
                return target.get_job(job_name)
            except Exception as exc:
                raise JobReferenceError(
                    f"job reference {reference!r}: {exc}", reference=reference
                ) from exc
        if len(target.job_names) == 1:
            return target.get_job(target.job_names[0])
        raise JobReferenceError(
            f"job reference {reference!r}: {head!r} holds several jobs "
            f"({', '.join(target.job_names)}); name one as '{head}.<job>'",
            reference=reference,
        )
    if isinstance(target, JobDefinition) and not job_name:
        return target
    raise JobReferenceError(
        f"job reference {reference!r}: {attr_path!r} is a {type(target).__name__}, not a "
        "@job or a Definitions",
        reference=reference,
    )


def load_job(reference: str, *, use_cache: bool = True) -> JobDefinition:
    """Load the job a reference names; cached per process."""
    if use_cache:
        with _cache_lock:
            cached = _cache.get(reference)
        if cached is not None:
            return cached
    module_name, attr_path = _split(reference)
    module = _import_module(module_name, reference)
    loaded = _resolve(module, attr_path, reference).with_reference(reference)
    with _cache_lock:
        _cache[reference] = loaded
    return loaded


def infer_reference(job: JobDefinition) -> str | None:
    """A reference that loads ``job`` in another process, or None when there is none.

    Found by looking for the job among module-level attributes of the module that
    defined its steps' functions; jobs defined in ``__main__`` or inside functions have
    none.
    """
    if job.reference is not None:
        return job.reference
    modules = [job.module] if job.module else []
    modules += sorted({node.step.fn.__module__ for node in job.nodes.values()})
    for module_name in modules:
        module = sys.modules.get(module_name)
        if module is None or module_name == "__main__":
            continue
        for attr, value in vars(module).items():
            if isinstance(value, JobDefinition) and value.nodes is job.nodes:
                return f"{module_name}:{attr}"
            if isinstance(value, Definitions) and job.name in value.job_names:
                candidate = value.get_job(job.name)
                if candidate.nodes is job.nodes:
                    return f"{module_name}:{attr}.{job.name}"
    return None
