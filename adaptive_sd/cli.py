"""``adaptive-sd``: run the router, the stage servers, or both.

adaptive-sd up            stage servers + router (the CPU demo: `make up`)
adaptive-sd serve         router only, stages already running
adaptive-sd stages        stage servers only
adaptive-sd vllm-cmd      print the vLLM command line of each GPU stage
adaptive-sd check-config  validate a config and print it resolved
adaptive-sd tenants ...   manage tenants in the shared Redis store (see `adaptive-sd tenants -h`)
adaptive-sd report        the traffic log as realised savings and quality over time (see `adaptive-sd report -h`)
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import shlex
import signal
import sys
from collections.abc import Callable
from types import FrameType

import uvicorn

from common.settings import ConfigError, Settings, VLLMLaunch, load_settings


def _serve(settings: Settings, stage_process: Callable[[str], str | None] | None = None) -> None:
    """Run the router until SIGTERM or Ctrl-C, then drain it for at most ``server.shutdown_grace_s``.

    On the signal uvicorn closes its listening socket at once (new connections
    are refused, so a load balancer or a client-side failover moves on), closes
    idle keep-alive connections, and lets requests and streams in flight run
    for up to the grace; what still runs then is cancelled (a stream is cut, a
    request not yet answered gets uvicorn's 500), the app's shutdown flushes
    usage and closes the stages' connections, and the call returns.
    """
    from router.api import create_app

    app = create_app(settings, stage_process=stage_process)
    print(
        f"router listening on http://{settings.server.host}:{settings.server.port}/v1 (model '{settings.cascade.model_name}')",
        file=sys.stderr,
        flush=True,
    )
    gc.collect()
    gc.freeze()  # what start-up made (modules, the predictor, the app) lives as long as the process: keep the collector off it
    uvicorn.run(
        app,
        host=settings.server.host,
        port=settings.server.port,
        log_level=settings.server.log_level,
        access_log=False,
        proxy_headers=False,  # nothing reads the client's address or scheme; uvicorn's middleware for them costs CPU per request
        loop="uvloop",
        http="httptools",
        # annotated int by uvicorn, but it is handed to asyncio.wait_for, which takes float seconds
        timeout_graceful_shutdown=settings.server.shutdown_grace_s,  # type: ignore[arg-type]
    )


def _sigterm_as_interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM as Ctrl-C, outside uvicorn's own handlers.

    Before uvicorn runs (a stage still loading, the predictor loading) a SIGTERM
    stops at once. While it runs, uvicorn's handlers take both signals and
    drain; when it has drained it raises the captured signal again, which
    lands here: so ``up`` stops its stages only after the router has drained,
    and ``serve`` exits 0 instead of dying by the re-raised signal.
    """
    raise KeyboardInterrupt


def _with_stages(settings: Settings, then_serve: bool) -> int:
    """Start the stage servers, then the router (``up``) or just wait (``stages``); stop the stages last.

    The stages run in their own sessions, so a Ctrl-C at the terminal or a
    SIGTERM to this process reaches only the router: it drains (requests in
    flight still need their stages), and only then ``finally`` stops the stages.

    A stage process that dies while the ladder runs is a fault the ladder cannot
    hide (every request that needs the stage would fail): its name, how it ended
    and the last lines it wrote are printed, the router drains and stops as on a
    SIGTERM, and the command exits 1, so a supervisor restarts the whole ladder.
    """
    from servers.launcher import Ladder, StageExit

    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    ladder = Ladder(settings)
    died: list[StageExit] = []

    def stage_died(gone: StageExit) -> None:
        if ladder.stopping:  # the stop began after the watcher saw the exit: it is ours, not a fault
            return
        died.append(gone)
        print(f"error: {gone.message()}\nstopping the router and the other stages", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGTERM)

    try:
        ladder.start()
        print(f"starting {len(ladder.stages)} stage server(s); logs in {ladder.log_dir}", file=sys.stderr, flush=True)
        ladder.wait_healthy(settings.server.startup_timeout_s)
        ladder.watch(stage_died)
        if then_serve:
            _serve(settings, stage_process=ladder.status)
        else:
            signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        # Stopping the stages must run to its end (SIGTERM, the grace, then SIGKILL): a second Ctrl-C or SIGTERM
        # here would leave stage servers running in their own sessions, with nothing left to stop them.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        ladder.stop()
    return 1 if died else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="adaptive-sd", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="ladder YAML (default: $ADAPTIVE_SD_CONFIG or configs/cpu.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("up", "serve", "stages", "vllm-cmd", "check-config"):
        sub.add_parser(name)
    from router.tenants import cli as tenants_cli

    tenants_cli.add_parser(sub)
    from training import report

    report.add_arguments(sub.add_parser("report", help="the router's traffic log (predictor.log_path) as savings and quality over time"))
    args = parser.parse_args(argv)
    try:
        if args.command == "report":  # its own --config (after the command) or the global one
            return report.command(args, args.report_config or args.config)
        settings = load_settings(args.config)
        if args.command in ("up", "stages"):
            return _with_stages(settings, then_serve=args.command == "up")
        elif args.command == "serve":
            signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
            with contextlib.suppress(KeyboardInterrupt):
                _serve(settings)
        elif args.command == "vllm-cmd":
            from servers.launcher import vllm_command

            for stage in settings.stages:
                if isinstance(stage.launch, VLLMLaunch):
                    cmd, env = vllm_command(stage, stage.launch)
                    print(" ".join(f"{k}={v}" for k, v in env.items()), shlex.join(cmd))
        elif args.command == "check-config":
            from predictor.serving.loader import load_predictor
            from router.tenants.redis_connect import check_redis_url

            check_redis_url(settings.tenancy.redis_url)  # a malformed URL is a ConfigError naming tenancy.redis_url
            predictor = load_predictor(settings)  # the shipped model is package data: this proves the install finds it
            print(settings.model_dump_json(indent=2))
            print(f"config ok: {len(settings.stages)} stage(s), predictor {predictor.name} (top-k {predictor.top_k})", file=sys.stderr)
        elif args.command == "tenants":
            return tenants_cli.run(settings, args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # LaunchError, WeightsError, PredictorLoadError
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
