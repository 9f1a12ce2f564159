"""Sweep: start a grid of runs (backbones x modes x datasets x resolutions x seeds) and follow it
(layout only; the logic is ``tinytl_core.ui.sweep`` and ``tinytl_core.sweeps``).

The sweep's runs are jobs of the persistent queue, trained by the server's worker processes: the sweep
goes on when the tab closes, and this page finds it again in the same session. With a Ray address, the
command line's sweep driver runs the grid on Ray in a process of its own, and the page follows its status."""

import streamlit as st

from app_pages import _cache
from app_pages._guard import guarded
from tinytl_core.adapt import AdaptConfig
from tinytl_core.data import list_datasets
from tinytl_core.jobs import JobQueue, NotYourJobError
from tinytl_core.modes import MODES
from tinytl_core.results import ResultsStore
from tinytl_core.sweeps.driver import DriverState
from tinytl_core.ui.sweep import (
    MAX_SWEEP,
    build_grid,
    cancel_ray_sweep,
    cancel_sweep,
    driver_status_path,
    parse_ray_address,
    ray_sweep_status,
    start_ray_sweep,
    start_sweep,
    sweep_status,
)

POLL_SECONDS = 2.0

settings = _cache.settings()
owner = f"{settings.session_id}/sweep"  # the session's sweeps, apart from its Adapt runs
queue, store = JobQueue(), ResultsStore()

st.header("Sweep")
st.caption(
    "A grid of short adaptations, every combination once, trained by the server's worker processes. "
    "Configurations already finished in the results store are skipped, so a stopped sweep resumes where "
    "it stopped. The runs land on Compare runs, where repeated seeds are grouped. Give a Ray address to "
    "run the grid on a Ray cluster instead. Larger grids: `python -m tinytl_core sweep`."
)


def render_status(sweep: str, *, live: bool) -> None:
    """The sweep's progress, its jobs, and Cancel while some have not ended."""
    status = sweep_status(queue, sweep, owner)
    st.subheader("Your sweep")
    st.progress(min(1.0, status.fraction), text=status.line())
    workers = _cache.pool_size()
    if not workers and status.active:
        st.caption("No workers started by this server: run `python -m tinytl_core worker` to train the jobs.")
    if status.others_active:
        st.caption(
            f":material/group: {status.others_active} job(s) of this grid were queued by another session "
            "(the same configurations, trained once for both of you). If that session cancels them, they "
            "go on as yours."
        )
    if status.handed_over:
        st.caption(
            f":material/group: {status.handed_over} job(s) you cancelled go on for another session that "
            "waits for the same runs; their runs land on Compare runs."
        )
    if status.cancellable and st.button(
        f"Cancel your {status.cancellable} job(s)", icon=":material/stop_circle:", key="sw_cancel"
    ):
        st.toast(cancel_sweep(queue, sweep, owner).message())
        st.rerun()  # the whole page: a full run works from a fragment and from a script run alike
    st.dataframe(status.frame(), hide_index=True, width="stretch", placeholder="–", key="sw_jobs")
    if live and not status.active:
        st.rerun(scope="app")  # every job ended: redraw once, without polling
    if not status.active:
        st.page_link(
            "app_pages/compare_runs.py",
            label="See the runs grouped over seeds on Compare runs",
            icon=":material/scatter_plot:",
        )


@guarded  # a fragment reruns outside the page: it gets the page's guard itself
def live_status() -> None:
    render_status(st.session_state["sw_sweep"], live=True)


def render_ray(sweep: str, *, live: bool) -> None:
    """A sweep on Ray: its driver's state and progress, and Cancel while it runs."""
    path = driver_status_path(store.path, sweep)
    status = ray_sweep_status(path)
    st.subheader("Your sweep on Ray")
    if status is None:
        st.info("The sweep's driver has not reported yet.", icon=":material/hourglass_top:")
        return
    st.progress(status.fraction, text=status.line())
    if status.progress.last:
        st.caption(f"Last: {status.progress.last}")
    if status.state is DriverState.FAILED:
        st.error(f"The sweep on {status.where or 'Ray'} stopped: {status.message}", icon=":material/error:")
    elif status.state is DriverState.INTERRUPTED:
        st.info(status.message, icon=":material/pause_circle:")
    theirs = status.owner is not None and status.owner != owner
    if status.active and theirs:
        st.caption(":material/group: Another session started this sweep: only it can cancel it.")
    elif status.active and st.button("Cancel this sweep", icon=":material/stop_circle:", key="sw_ray_cancel"):
        try:
            cancel_ray_sweep(path, owner)
        except NotYourJobError as exc:  # taken over between the check and the click
            st.warning(str(exc), icon=":material/block:")
            return
        st.toast("Stopping the sweep: runs stored so far stay; start it again to resume.")
        st.rerun()  # the whole page: a full run works from a fragment and from a script run alike
    if live and not status.active:
        st.rerun(scope="app")
    if not status.active and status.progress.done:
        st.page_link(
            "app_pages/compare_runs.py",
            label="See the runs grouped over seeds on Compare runs",
            icon=":material/scatter_plot:",
        )


@guarded
def live_ray() -> None:
    render_ray(st.session_state["sw_ray"], live=True)


on_ray = st.session_state.get("sw_ray")
if on_ray:
    ray_status = ray_sweep_status(driver_status_path(store.path, on_ray))
    if ray_status is not None and ray_status.active:
        st.fragment(live_ray, run_every=POLL_SECONDS)()
    else:
        render_ray(on_ray, live=False)
    st.divider()

current = st.session_state.get("sw_sweep")
if current:
    if sweep_status(queue, current).active:
        st.fragment(live_status, run_every=POLL_SECONDS)()
    else:
        render_status(current, live=False)
    st.divider()

datasets = {d.name: d for d in list_datasets()}
with st.form("sw_form"):
    st.subheader("New sweep")
    backbones = st.multiselect("Backbones", _cache.backbone_names(), default=[settings.backbone], key="sw_bb")
    modes = st.multiselect(
        "Modes", list(MODES), default=list(MODES), format_func=lambda m: MODES[m].title, key="sw_modes"
    )
    chosen = st.multiselect(
        "Datasets",
        list(datasets),
        default=[d for d in ("shapes", "digits") if d in datasets],
        format_func=lambda d: datasets[d].title,
        key="sw_datasets",
    )
    c = st.columns(3)
    resolutions = c[0].text_input(
        "Resolutions (px)",
        "own",
        key="sw_res",
        help="Comma-separated sizes in px, 8 to 1,024; 'own' (or 0) is each backbone's own size.",
    )
    seeds = c[1].text_input("Seeds", "0,1,2", key="sw_seeds", help="Comma-separated training seeds.")
    steps = c[2].number_input("Steps per run", min_value=1, max_value=100_000, value=200, key="sw_steps")
    ray_address = st.text_input(
        "Ray address (optional)",
        "",
        key="sw_ray_address",
        placeholder="empty: this server's workers",
        help="Empty: this server's worker processes. 'local': a Ray instance on this server for the sweep; "
        "'auto': the Ray cluster running on this machine; host:port or ray://host:port: that cluster, if "
        "whoever runs the server allowed it (TINYTL_RAY_ADDRESSES). Needs Ray installed on the server.",
    )
    group_norm = st.toggle(
        "GroupNorm + weight standardisation",
        key="sw_group_norm",
        help="The paper's recipe for small batches (batch 1 needs it where BatchNorm layers use batch "
        "statistics): every run of the sweep replaces BatchNorm by GroupNorm with standardised conv weights.",
    )
    st.caption(
        f"Batch {settings.batch_size} and {'pretrained weights' if settings.pretrained else 'random init'} "
        f"from the sidebar. At most {MAX_SWEEP} configurations per sweep."
    )
    submitted = st.form_submit_button("Start sweep", type="primary", icon=":material/play_arrow:")

if submitted:
    try:
        grid = build_grid(
            backbones=backbones,
            modes=modes,
            datasets=chosen,
            resolutions=resolutions,
            seeds=seeds,
            steps=int(steps),
            base=AdaptConfig(
                batch_size=settings.batch_size, pretrained=settings.pretrained, group_norm=group_norm
            ),
        )
        address = parse_ray_address(ray_address)
        if address is None:
            started = start_sweep(grid, queue, store, owner=owner)
        else:
            with st.spinner("Checking Ray and starting the sweep's driver…"):
                started = start_ray_sweep(grid, address, store, owner=owner)
    except ValueError as exc:
        st.error(str(exc), icon=":material/block:")
    else:
        if address is None:
            st.session_state["sw_sweep"] = started.sweep
        elif started.total > started.skipped:  # a driver runs it (just started, or already running)
            st.session_state["sw_ray"] = started.sweep
        st.toast(started.message())
        st.rerun()
