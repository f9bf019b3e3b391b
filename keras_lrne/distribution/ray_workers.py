"""`RayWorkers`: evaluation in Ray actors that rebuild their members from seeds."""

import collections
import contextlib
import math
import os
import pickle
import time
import warnings

import numpy as np

from keras_lrne import _optional
from keras_lrne._validation import check_int, is_int
from keras_lrne.distribution.worker_protocol import protocol_for
from keras_lrne.evaluators import (
    MAX_PROGRESS_STEPS,
    EnvironmentEvaluator,
    PythonFitnessEvaluator,
    SupervisedEvaluator,
    tokens_per_sample,
)
from keras_lrne.tasks.base import fitness_maximize, task_kind

#: A chunk whose worker died is handed out again at most this many times.
MAX_CHUNK_ATTEMPTS = 3
#: Members per chunk of an environment task (at least; or the whole population).
MIN_ENV_CHUNK = 8
#: Seconds a cluster's address may take to answer before the run fails.
CONNECT_TIMEOUT_SECONDS = 10


def _ids(members):
    return [int(m) for m in members]


def _ray():
    return _optional.require("ray", "RayWorkers", "distributed", packages="Ray")


class RayWorkers:
    """Evaluates the population in Ray actors, on one machine or a cluster.

    Neuroevolution is cheap to distribute because a member is its seeds: each worker (a
    Ray actor) builds the model once, compiles the same population functions, holds its
    own environments (or the task's data), and rebuilds the members it evaluates from
    `(parent, seed)` records with the same compiled reproduction as the coordinator,
    bit for bit. Per generation, only those records (8 bytes per member, and for the
    GA the survivors' records, for OpenES the update's seeds and weights) go out, and
    losses (plus episode logs) come back. The coordinator (the `evolve()` process) keeps
    selection, the lineage, callbacks and `BackupAndRestore`.

    The population is split into fixed chunks (the progress-bar steps), handed out as
    workers become free, so a slow worker takes fewer. Results do not depend on which
    worker evaluated which member, nor on the number of workers: the same seed gives the
    same History and elite as a run without workers (up to float rounding of the
    losses when the chunking differs). A worker process that dies is replaced by a new
    one and its chunk handed out again; the generation completes with the same result. A
    worker that raises fails the run with the worker's error; the run's backup
    (`BackupAndRestore`) can then be resumed.

    Observation normalisation (`keras_lrne.tasks.Control`): workers start each chunk from
    the coordinator's statistics and send back the observations they sampled; the
    coordinator adds them in chunk order at the end of each evaluation, so the
    statistics do not depend on the worker count (they differ from a run without
    workers, which samples from its own environment slots).

    Workers run on CPU unless `resources_per_worker` gives them GPUs (Ray hides the GPUs
    from a worker that has none, and keras-lrne keeps JAX off them).

    Args:
        num_workers: worker processes. Default: one per CPU core of the Ray cluster
            (of this machine for a local runtime).
        address: None (default) starts a local Ray runtime (`ray.init`); `"auto"` joins
            the cluster this machine belongs to (`ray start --head` on one machine,
            `ray start --address=HEAD:6379` on the others), `"ray://HOST:10001"` a
            remote cluster through Ray Client.
        resources_per_worker: Ray resources of each worker, e.g. `{"CPU": 2}` or
            `{"CPU": 1, "GPU": 0.5}`. Default: `{"CPU": 1}`.

    Example:

    >>> workers = keras_lrne.distribution.RayWorkers(num_workers=8)
    >>> model.evolve(keras_lrne.tasks.Atari("Frostbite"), strategy=strategy,
    ...              generations=100, distribution=workers)
    """

    def __init__(self, num_workers=None, address=None, resources_per_worker=None):
        self.num_workers = check_int("num_workers", num_workers, allow_none=True)
        if address is not None and (not isinstance(address, str) or not address.strip()):
            raise ValueError(
                "Received an invalid value for `address`, expected None (a local Ray "
                "runtime), 'auto' or a cluster address such as 'ray://host:10001'. "
                f"Received: address={address!r}"
            )
        if resources_per_worker is not None and (
            not isinstance(resources_per_worker, dict) or not all(
                isinstance(k, str) and (is_int(v) or isinstance(v, float))
                and math.isfinite(v) and v >= 0 for k, v in resources_per_worker.items())
        ):
            raise ValueError(
                "Received an invalid value for `resources_per_worker`, expected a dict "
                "of Ray resource names and non-negative amounts such as {'CPU': 1}. "
                f"Received: resources_per_worker={resources_per_worker!r}"
            )
        self.address = address
        self.resources_per_worker = dict(resources_per_worker or {"CPU": 1})
        self._actors = []
        self._synced = []
        self._started_ray = False
        #: Bytes of the requests sent to workers, and of the replies, in the last
        #: evaluation (pickled size); its seconds, and the seconds spent waiting for
        #: workers.
        self.bytes_sent = self.bytes_received = 0
        self.map_seconds = self.wait_seconds = 0.0

    def get_config(self):
        return {"num_workers": self.num_workers, "address": self.address,
                "resources_per_worker": self.resources_per_worker}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"RayWorkers({args})"

    # -- lifecycle ------------------------------------------------------------------------
    def _connect(self):
        ray = _ray()
        if ray.is_initialized():
            return ray
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # local runs need no token
        if self.address is None:
            cpus = max(self.num_workers or 0, os.cpu_count() or 1)
            with warnings.catch_warnings():
                # Ray starts its processes with fork+exec, which JAX warns about.
                warnings.filterwarnings("ignore", message="os.fork", category=RuntimeWarning)
                ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False,
                         configure_logging=False)
        else:
            if self.address != "auto":
                self._check_reachable()
            start = time.perf_counter()
            try:
                ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                         configure_logging=False)
            except Exception as error:
                raise ConnectionError(
                    f"Could not join the Ray cluster at address={self.address!r} "
                    f"(after {time.perf_counter() - start:.1f} s): "
                    f"{type(error).__name__}: {error}"
                ) from error
        self._started_ray = True
        return ray

    def evaluator(self, run, task):
        """Starts the workers and returns the evaluator of `run` (a
        `keras_lrne.engine.Run`) on `task`, whose members the workers evaluate."""
        members = run.strategy.num_members
        kind = task_kind(task)  # the engine's table of task kinds (`TASK_KINDS`)
        if kind == "python_fitness":  # chunks of members
            group = min(members, -(-members // MAX_PROGRESS_STEPS))
            self.start(run, task, group)
            return _PythonFitness(self, run, task, group)
        if kind == "supervised":
            self.start(run, task, run.group_size)
            return _Supervised(
                self, run, run.functions, run.groups, members, run.batch_size,
                task.train_data, validation=run.validation,
                validation_batch_size=run.validation_batch_size,
                tokens_per_sample=tokens_per_sample(task),
                maximize=fitness_maximize(task))
        # Chunks of at least 8 members (or all), whatever the worker count: each worker
        # plays a chunk on its own vector environment.
        group = min(members, max(-(-members // MAX_PROGRESS_STEPS), MIN_ENV_CHUNK))
        self.start(run, task, group)
        return EnvironmentEvaluator(task, run.strategy,
                                    rollout=_Rollout(self, run, task, group))

    def _check_reachable(self):
        """Fails within `CONNECT_TIMEOUT_SECONDS` when the cluster's address does not
        answer (`ray.init` would wait for minutes)."""
        from keras_lrne._net import probe

        address = self.address.split("://", 1)[-1]
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(
                "Received an invalid value for `address`, expected 'auto', 'HOST:PORT' or "
                f"'ray://HOST:PORT'. Received: address={self.address!r}"
            )
        if not probe((host, int(port)), CONNECT_TIMEOUT_SECONDS):
            raise ConnectionError(
                f"Could not reach the Ray cluster at address={self.address!r}: nothing "
                f"answered on {host}:{port} within {CONNECT_TIMEOUT_SECONDS} s. Start it "
                "with `ray start --head` (or check the address and the firewall)."
            )

    def start(self, run, task, group_size):
        """Starts the workers of `run` (an `evolve()` run) on `task`; each evaluates up
        to `group_size` members per call."""
        import keras

        ray = self._connect()
        count = self.num_workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        resources = dict(self.resources_per_worker)
        gpus = float(resources.pop("GPU", 0))
        cpus = float(resources.pop("CPU", 1))
        env = {"KERAS_BACKEND": keras.config.backend(),
               "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
        if not gpus:
            env["JAX_PLATFORMS"] = "cpu"  # Ray hides the GPUs; JAX must not probe them
        self._actor_class = ray.remote(_Worker).options(
            num_cpus=cpus, num_gpus=gpus, resources=resources or None,
            runtime_env={"env_vars": env})
        self._spec = ray.put({
            "model": run.model, "task": task, "seed": run.seed,
            "start": run.lineage.start,  # the run's starting weights, if it keeps them
            "strategy": (type(run.strategy), run.strategy.get_config()),
            "freeze_normalization": run.freeze_normalization,
            "chunk_size": run.chunk_size, "batch_size": run.batch_size,
            "group_size": int(group_size),
        })
        self._actors = [self._actor_class.remote(self._spec) for _ in range(count)]
        self._synced = [0] * count  # the population each worker can build
        try:
            ray.get([a.ready.remote() for a in self._actors])
        except ray.exceptions.RayError as error:
            self.close()
            raise RuntimeError(
                "The Ray workers could not start (each unpickles the model and the task: "
                "classes they use must be importable on the workers, or defined in the "
                f"script that runs evolve()): {error}"
            ) from error

    def close(self):
        """Stops the workers (and the local Ray runtime this object started)."""
        if not self._actors and not self._started_ray:
            return
        ray = _ray()
        for actor in self._actors:
            with contextlib.suppress(Exception):  # already gone with the cluster
                ray.kill(actor)
        self._actors = []
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False

    def worker_pids(self):
        """The process ids of the workers (for inspection and tests)."""
        ray = _ray()
        return ray.get([a.pid.remote() for a in self._actors])

    # -- evaluation -----------------------------------------------------------------------
    def map(self, strategy, records, generation, chunks, request, on_result=None):
        """Evaluates `chunks` (lists of member indices of population `generation`) on the
        workers, handing each chunk to the next free worker; returns the replies in
        chunk order. `on_result(done_chunks, reply)` is called as chunks complete."""
        ray = _ray()
        protocol = protocol_for(strategy)
        syncs = {}

        def syncs_for(worker):
            needed = range(self._synced[worker] + 1, generation + 1)
            for g in needed:
                if g not in syncs:
                    syncs[g] = protocol.sync_payload(records, g)
            return [(g, syncs[g]) for g in needed]

        pending = collections.deque(range(len(chunks)))
        attempts = [0] * len(chunks)
        replies = [None] * len(chunks)
        idle = list(range(len(self._actors)))
        running = {}
        self.bytes_sent = self.bytes_received = 0
        self.wait_seconds, started = 0.0, time.perf_counter()
        done = 0
        while pending or running:
            while pending and idle:
                worker, chunk = idle.pop(0), pending.popleft()
                args = (syncs_for(worker), generation,
                        protocol.member_payload(records, generation, chunks[chunk]), request)
                self.bytes_sent += len(pickle.dumps(args))
                future = self._actors[worker].evaluate.remote(*args)
                running[future] = (worker, chunk)
            waited = time.perf_counter()
            ready, _ = ray.wait(list(running), num_returns=1)
            self.wait_seconds += time.perf_counter() - waited
            worker, chunk = running.pop(ready[0])
            try:
                reply = ray.get(ready[0])
            except ray.exceptions.RayTaskError as error:
                raise RuntimeError(
                    f"A Ray worker failed while evaluating members {_ids(chunks[chunk])} of "
                    f"generation {generation}: {error.cause!r}"
                ) from error
            except ray.exceptions.RayActorError as error:
                # The worker process died: a new worker replaces it, and its chunk goes
                # back to the queue.
                attempts[chunk] += 1
                if attempts[chunk] >= MAX_CHUNK_ATTEMPTS:
                    raise RuntimeError(
                        f"Ray workers died {attempts[chunk]} times while evaluating members "
                        f"{_ids(chunks[chunk])} of generation {generation}; the last "
                        f"error: {error}"
                    ) from error
                with contextlib.suppress(Exception):
                    ray.kill(self._actors[worker])
                self._actors[worker] = self._actor_class.remote(self._spec)
                self._synced[worker] = 0
                pending.appendleft(chunk)
                idle.append(worker)
                continue
            self.bytes_received += len(pickle.dumps(reply))
            self._synced[worker] = generation
            replies[chunk] = reply
            idle.append(worker)
            done += 1
            if on_result is not None:
                on_result(done, reply)
        self.map_seconds = time.perf_counter() - started
        return replies


class _Supervised(SupervisedEvaluator):
    """`SupervisedEvaluator` whose groups are evaluated by the workers."""

    def __init__(self, workers, run, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.workers, self.run = workers, run

    def _losses(self, population, generation, x, y, progress):
        size = self.run.group_size
        chunks = [np.arange(start, start + size) for start, _ in self.groups]
        best = [math.inf]

        def reported(done, reply):
            finite = reply["losses"][np.isfinite(reply["losses"])]
            if finite.size:
                best[0] = min(best[0], float(finite.min()))
            if progress is not None:
                progress.advance_to(done, {"loss": best[0]} if math.isfinite(best[0]) else {})

        replies = self.workers.map(self.run.strategy, self.run.lineage.records, generation,
                                   chunks, {}, reported)
        return np.concatenate([reply["losses"][skip:]
                               for reply, (_, skip) in zip(replies, self.groups)])

    def close(self):
        self.workers.close()


class _PythonFitness(PythonFitnessEvaluator):
    """`PythonFitnessEvaluator` whose members are scored in the workers."""

    def __init__(self, workers, run, task, group_size):
        super().__init__(run.model, run.evolvable, task.fn, run.strategy.num_members,
                         task.maximize)
        self.workers, self.run, self.group_size = workers, run, group_size

    def _fitness(self, population, generation, progress):
        members = np.arange(self.num_members)
        chunks = [members[i: i + self.group_size]
                  for i in range(0, self.num_members, self.group_size)]
        finished = [0]

        def reported(done, reply):
            finished[0] += len(reply["fitness"])
            if progress is not None:
                progress.advance_to(finished[0])

        replies = self.workers.map(self.run.strategy, self.run.lineage.records, generation,
                                   chunks, {}, reported)
        fitness = np.concatenate([np.asarray(r["fitness"], "float64") for r in replies])
        errors = [(int(chunk[row]), error) for chunk, r in zip(chunks, replies)
                  for row, error in r["errors"]]
        return fitness, errors

    def close(self):
        self.workers.close()


class _Rollout:
    """What `EnvironmentEvaluator` plays episodes with: chunks of members on the workers
    (the interface of `keras_lrne.rollout.RolloutEvaluator.evaluate`)."""

    def __init__(self, workers, run, task, group_size):
        self.workers, self.run, self.task, self.group_size = workers, run, task, group_size

    def evaluate(self, population, generation, members=None, episodes=None, stage=0,
                 progress=None, progress_offset=0):
        task = self.task
        size = self.run.strategy.num_members
        members = np.arange(size) if members is None else np.asarray(members)
        episodes = task.episodes if episodes is None else int(episodes)
        chunks = [members[i: i + self.group_size]
                  for i in range(0, len(members), self.group_size)]
        normalizer = getattr(task, "normalizer", None)
        request = {"episodes": episodes, "stage": stage,
                   "task_state": task.get_state() if normalizer is not None else None}
        finished = [0]

        def reported(done, reply):
            finished[0] += len(reply["losses"]) * episodes
            if progress is not None:
                progress.advance_to(progress_offset + finished[0],
                                    {"env_steps": int(reply["logs"]["env_steps"])})

        start = time.perf_counter()
        replies = self.workers.map(self.run.strategy, self.run.lineage.records, generation,
                                   chunks, request, reported)
        elapsed = max(time.perf_counter() - start, 1e-9)
        # Statistics in chunk order, whichever worker played which chunk.
        task.observe([obs for reply in replies for obs in reply["raw_sample"]])
        logs = [reply["logs"] for reply in replies]
        slots = [len(chunk) * episodes for chunk in chunks]
        steps = sum(int(log["env_steps"]) for log in logs)
        return (np.concatenate([r["losses"] for r in replies]),
                np.concatenate([r["returns"] for r in replies]), {
                    "env_steps": steps,
                    "frames_per_second": steps / elapsed,
                    "policy_share": float(np.mean([log["policy_share"] for log in logs])),
                    "early_termination_saved": float(sum(
                        log["early_termination_saved"] * n for log, n in zip(logs, slots))
                        / sum(slots)),
                    "failed_members": int(sum(log["failed_members"] for log in logs)),
                })

    def close(self):
        self.workers.close()


def _picklable(error):
    try:
        pickle.dumps(error)
        return error
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")


class _Worker:
    """A Ray actor: one model, its compiled population functions and the task."""

    def __init__(self, spec):
        from keras_lrne import genome
        from keras_lrne import population as pop

        self.model, self.task = spec["model"], spec["task"]
        strategy_class, config = spec["strategy"]
        self.strategy = strategy_class.from_config(config)
        self.protocol = protocol_for(self.strategy)
        specs = genome.collect_variable_specs(self.model, spec["freeze_normalization"])
        evolvable = [s for s in specs if s.evolvable]
        start = spec.get("start")
        self.state = self.protocol.worker_init(
            evolvable, spec["seed"], **({} if start is None else {"start": start}))
        self.synced = 0
        self.supervised = bool(getattr(self.task, "supervised", True))
        self.per_member = bool(getattr(self.task, "per_member", False))
        self.evolvable = evolvable
        loss = getattr(self.model, "loss", None) if self.supervised else None
        objective = pop.objective_for(self.model, self.task) if self.supervised else None
        self.functions = pop.PopulationFunctions(self.model, specs, loss, spec["chunk_size"],
                                                 objective=objective)
        self.batch_size = spec["batch_size"]
        self._data = (None, None, None)
        self.rollout = None
        if not self.supervised and not self.per_member:
            from keras_lrne.rollout import RolloutEvaluator

            self.rollout = RolloutEvaluator(self.model, self.functions, self.task,
                                            spec["group_size"], spec["seed"])

    def ready(self):
        return True

    def pid(self):
        return os.getpid()

    def evaluate(self, syncs, generation, payload, request):
        from keras_lrne import backend as lrne_backend
        from keras_lrne import population as pop

        for g, sync in syncs:
            if g != self.synced + 1:
                raise RuntimeError(f"worker at population {self.synced} received the "
                                   f"update to population {g}")
            self.state = self.protocol.worker_sync(self.state, sync)
            self.synced = g
        if self.synced != generation:
            raise RuntimeError(f"worker at population {self.synced} asked for members of "
                               f"population {generation}")
        members = self.protocol.worker_members(self.state, payload)
        bk = lrne_backend.get()
        functions = self.functions
        if self.per_member:
            from keras_lrne.evaluators import member_fitness

            arrays = [bk.to_numpy(v) for v in pop.materialize(members)]
            fitness, errors = member_fitness(self.model, self.evolvable, self.task.fn,
                                             arrays, range(len(arrays[0])))
            # Rows of the chunk; exceptions travel as their repr if they cannot be pickled.
            return {"fitness": fitness, "errors": [(m, _picklable(e)) for m, e in errors]}
        if self.supervised:
            x, y = self.task.train_data(generation)
            if self._data[0] is not x:
                self._data = (x, pop.to_tensors(pop.batch_data(x, self.batch_size)),
                              pop.to_tensors(pop.batch_data(y, self.batch_size)))
            losses = functions.evaluate(members, functions.frozen_values(),
                                        functions.non_trainable_values(), *self._data[1:])
            return {"losses": bk.to_numpy(losses)}
        if request.get("task_state") and hasattr(self.task, "set_state"):
            self.task.set_state(request["task_state"])
        losses, returns, logs = self.rollout.evaluate(
            members, generation, episodes=request["episodes"], stage=request["stage"])
        return {"losses": losses, "returns": returns, "logs": logs,
                "raw_sample": self.rollout.raw_sample}

    def __del__(self):  # pragma: no cover - at process exit
        if getattr(self, "rollout", None) is not None:
            self.rollout.close()
