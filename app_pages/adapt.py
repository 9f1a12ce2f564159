"""Adapt: train the selected backbone in one or several modes with live curves (layout only).

The training runs in a background job (``tinytl_core.ui.jobs``); a fragment polls its progress every
second. One job runs at a time in the whole app: a second start, from any tab, gets a clear message.
"""

import streamlit as st

from app_pages import _cache
from app_pages._guard import guarded
from tinytl_core.adapt import OPTIMIZERS, AdaptConfig, resolve_device
from tinytl_core.data import list_datasets
from tinytl_core.modes import MODES
from tinytl_core.quantities import RunStatus
from tinytl_core.results import MEMORY, RUN, ResultsStore, run_quantity
from tinytl_core.ui import checks, figures
from tinytl_core.ui.jobs import JOBS, JobBusyError, TrainingJob

UPLOAD = "upload"
POLL_SECONDS = 1.0

settings = _cache.settings()
backbone, resolution, batch_size = settings.backbone, settings.resolution, settings.batch_size
pretrained, session_id = settings.pretrained, settings.session_id


def render_job(job: TrainingJob, *, live: bool) -> None:
    """Progress, Stop button, live curves and the per-mode table of ``job``."""
    snap = job.snapshot()
    done = sum(m.ended for m in snap.modes)
    mine = job.may_stop(session_id)
    who = "" if snap.owner == session_id else " (started in another tab)"
    if snap.running:
        st.subheader(f"Training {snap.backbone} on {snap.dataset_label}{who}")
        current = snap.current
        text = f"mode {min(done + 1, len(snap.modes))} of {len(snap.modes)}"
        if current is not None:
            text += (
                f" · {MODES[current.mode].title} · step {current.steps_done} of {current.total_steps or '?'}"
            )
            text += f" · {current.phase}" if current.phase else ""
        st.progress(min(1.0, snap.fraction), text=text)
        left, right = st.columns([1, 4], vertical_alignment="center")
        if not mine:  # only the session that started a run stops it
            right.caption(
                f":material/lock: Another session's run: only the tab that started it can stop it. "
                f"{snap.elapsed_s:.0f} s elapsed; you can start yours when it ends."
            )
        elif left.button(
            "Stop",
            icon=":material/stop_circle:",
            key=f"stop_{snap.job_id}",
            width="stretch",
            disabled=snap.cancelling,
        ):
            job.cancel(session_id)
            snap = job.snapshot()
        if mine and snap.cancelling:
            right.warning(
                "Stopping at the next step; the run is kept as *cancelled*.", icon=":material/hourglass_top:"
            )
        elif mine:
            right.caption(
                f"{snap.elapsed_s:.0f} s elapsed. You can switch pages: the run goes on and this "
                "page picks it up again."
            )
    else:
        st.subheader(f"Last run: {snap.backbone} on {snap.dataset_label}{who}")
        st.caption(f"{done} mode(s) in {snap.elapsed_s:.0f} s.")
        cards = st.columns(max(3, len(snap.modes)))
        for card, m in zip(cards, snap.modes):
            r = m.result or {}
            accuracy, modelled = run_quantity(RUN.final_val_acc), run_quantity(MEMORY.total_modelled_bytes)
            memory = r.get(modelled.name)
            card.metric(
                f"{MODES[m.mode].title} · {m.status}",
                accuracy.text(r.get(accuracy.name), missing="–"),
                delta=None if memory is None else f"{modelled.text(memory)} (modelled)",
                delta_color="off",
                delta_arrow="off",
                border=True,
                help="Validation accuracy at the end of the run, and its training memory.",
            )
    series = [(m.mode, m.steps, m.evals) for m in snap.modes if m.steps or m.evals]
    if series:
        st.caption("Loss and accuracy per step (dotted: running training accuracy; markers: validation).")
        st.plotly_chart(figures.curves_figure(series), width="stretch", key="ad_curves")
    st.dataframe(snap.results_frame(), hide_index=True, width="stretch", key="ad_results", placeholder="–")
    for m in snap.modes:
        if RunStatus(m.status).unsuccessful:
            st.error(f"{MODES[m.mode].title} {m.status}: {m.message}", icon=":material/error:")
        result = m.result or {}
        for note in result.get("notes") or []:
            st.info(f"{MODES[m.mode].title}: {note}", icon=":material/info:")
        if result.get("memory_error"):
            st.caption(f"{m.mode}: memory figures unavailable ({result['memory_error']})")
    first = next((m.result for m in snap.modes if m.result), None)
    if first and job.configs[0].pretrained and not first.get("pretrained_loaded"):
        st.warning(f"Weights: {first.get('backbone_message', '')}", icon=":material/cloud_off:")
    if live and not snap.running:
        st.rerun(scope="app")  # the job ended: redraw the whole page without polling
    if not snap.running and any(m.result and m.result.get(RUN.id) for m in snap.modes):
        st.page_link(
            "app_pages/compare_runs.py",
            label="See every stored run on Compare runs",
            icon=":material/scatter_plot:",
        )


st.header("Adapt")
weights = "pretrained weights" if pretrained else "random initialisation"
st.caption(
    f"**{backbone}** · {resolution} px · batch {batch_size} · {weights} (change them in the sidebar). "
    f"Runs on {resolve_device('auto')}."
)


@guarded  # a fragment reruns outside the page: it gets the page's guard itself
def live_panel() -> None:
    current = JOBS.job
    if current is not None:
        render_job(current, live=True)


job = JOBS.job
if job is not None and job.running:
    st.fragment(live_panel, run_every=POLL_SECONDS)()
    st.divider()
elif job is not None:
    render_job(job, live=False)
    st.divider()

# ------------------------------------------------------------------------------------------ the form
if job is not None:
    st.subheader("New run")
datasets = {d.name: d for d in list_datasets()}
options = [*datasets, UPLOAD]


def dataset_title(name: str) -> str:
    if name == UPLOAD:
        return "Your images: upload a .zip of class folders"
    info = datasets[name]
    return info.title if info.kind == "builtin" else f"{info.title} (download {info.download_size})"


left, right = st.columns([3, 2])
with left:
    dataset = st.selectbox(
        "Dataset", options, key="ad_dataset", format_func=dataset_title, persist_state="session"
    )
    dataset_path: str | None = None
    if dataset == UPLOAD:
        upload = st.file_uploader("A .zip with one folder of images per class", type=["zip"], key="ad_upload")
        if upload is not None:
            with st.spinner("Reading the archive..."):
                checked = checks.check_upload(upload.name, upload.getvalue())  # once per content
            if checked.path is not None:
                dataset_path = str(checked.path)
                st.success(checked.summary, icon=":material/folder_zip:")
            else:
                st.error(checked.error, icon=":material/error:")
            st.caption(f":material/inventory_2: {checked.kept}")
    else:
        info = datasets[dataset]
        st.caption(info.description)
        if info.kind != "builtin":
            st.caption(
                ":material/cloud_download: Downloaded (once) into the data folder; offline, the run "
                "stops with a message. The built-in sets need no network."
            )
    modes = st.multiselect(
        "Modes (trained one after the other)",
        list(MODES),
        default=["last", "bias", "lite_residual+bias"],
        key="ad_modes",
        format_func=lambda m: MODES[m].title,
        persist_state="session",
    )
with right:
    steps = st.number_input(
        "Steps per mode",
        min_value=1,
        max_value=100_000,
        value=60,
        step=10,
        key="ad_steps",
        persist_state="session",
    )
    lr = st.number_input(
        "Learning rate",
        min_value=1e-6,
        max_value=1.0,
        value=1e-3,
        step=1e-4,
        format="%.5f",
        key="ad_lr",
        persist_state="session",
    )
    eval_every = st.number_input(
        "Evaluate every N steps (0 = only at the end)",
        min_value=0,
        max_value=100_000,
        value=20,
        step=5,
        key="ad_eval_every",
        persist_state="session",
    )
with st.expander("More options"):
    a, b, c = st.columns(3)
    optimizer = a.selectbox(
        "Optimizer",
        OPTIMIZERS,
        key="ad_optimizer",
        persist_state="session",
        help="Adam as in the paper, or SGD with momentum 0.9.",
    )
    label_smoothing = a.slider(
        "Label smoothing", 0.0, 0.9, 0.1, 0.05, key="ad_smoothing", persist_state="session"
    )
    seed = a.number_input(
        "Seed", min_value=0, max_value=2**31 - 1, value=0, key="ad_seed", persist_state="session"
    )
    shots = b.number_input(
        "Training images per class (0 = all)",
        min_value=0,
        max_value=100_000,
        value=0,
        key="ad_shots",
        persist_state="session",
    )
    val_cap = b.number_input(
        "Validation images per class (0 = all)",
        min_value=0,
        max_value=100_000,
        value=20,
        key="ad_val_cap",
        persist_state="session",
        help="Fewer makes evaluation faster.",
    )
    augment = b.toggle(
        "Augmentation (random crops, flips)", value=True, key="ad_augment", persist_state="session"
    )
    group_norm = c.toggle("GroupNorm instead of BatchNorm", key="ad_group_norm", persist_state="session")
    record_memory = c.toggle(
        "Record memory figures",
        value=True,
        key="ad_memory",
        persist_state="session",
        help="Modelled training memory of each mode, for the memory-accuracy plot.",
    )
    measure_memory = c.toggle(
        "... and measure one real step",
        value=True,
        key="ad_measure",
        persist_state="session",
        disabled=not record_memory,
    )

start = st.button("Start training", type="primary", icon=":material/play_arrow:", key="ad_start")
if start:
    errors = checks.run_problems(
        backbone=backbone,
        resolution=resolution,
        batch_size=batch_size,
        modes=modes,
        dataset_ready=dataset != UPLOAD or dataset_path is not None,
        resolution_problem=_cache.resolution_problem(backbone, resolution),
        mode_table=lambda: _cache.reports(
            backbone, resolution, batch_size, optimizer, "complete", group_norm
        )[0],
        device=resolve_device("auto"),
    )
    if errors:
        for error in errors:
            st.error(error, icon=":material/error:")
    else:
        configs = [
            AdaptConfig(
                backbone=backbone,
                mode=m,
                dataset=dataset_path or dataset,
                steps=int(steps),
                batch_size=batch_size,
                lr=float(lr),
                optimizer=optimizer,
                label_smoothing=float(label_smoothing),
                seed=int(seed),
                resolution=resolution,
                pretrained=pretrained,
                group_norm=group_norm,
                augment=augment,
                shots=int(shots) or None,
                val_cap=int(val_cap) or None,
                eval_every=int(eval_every),
                record_memory=record_memory,
                measure_memory=record_memory and measure_memory,
            )
            for m in modes
        ]
        label = dataset_title(dataset) if dataset != UPLOAD else upload.name
        try:
            JOBS.submit(TrainingJob(configs, store=ResultsStore(), owner=session_id, dataset_label=label))
        except JobBusyError as exc:
            st.error(str(exc), icon=":material/hourglass_top:")
        except ValueError as exc:
            st.error(f"Cannot start: {exc}", icon=":material/error:")
        else:
            st.rerun()
