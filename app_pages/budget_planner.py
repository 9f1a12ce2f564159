"""Budget planner: which backbone x mode x resolution x batch fits a memory budget, and how well it does
(layout only; the logic is tinytl_core.planner and tinytl_core.ui.planner_view)."""

import json

import streamlit as st

from app_pages import _cache
from tinytl_core.backbones import CURATED_BACKBONES
from tinytl_core.data import list_datasets
from tinytl_core.modes import MODES
from tinytl_core.planner.budget import PRESETS, BudgetError
from tinytl_core.planner.export import PlanRequest, training_plan
from tinytl_core.planner.plan import DEFAULT_RESOLUTIONS, PLANNED, PlanError, SearchSpace, plan
from tinytl_core.quantities import format_bytes
from tinytl_core.reference import PAPER_DATASETS
from tinytl_core.tracing import OPTIMIZER_STATES
from tinytl_core.ui import planner_view as view
from tinytl_core.ui.sweep import PAPER_CAPTION
from tinytl_core.ui.text import sentences

settings = _cache.settings()

st.header("Budget planner")
st.caption(
    "I have N MB: what can I train, and how well? Every backbone x mode x resolution x batch size of the "
    "search space, with its **modelled step peak** (the memory model's peak of one training step: weights, "
    "gradients, optimizer state and the activations alive at once). KB = 10^3, MB = 10^6 bytes; batch 1 "
    "trains with GroupNorm, as the paper."
)

options = [*PRESETS, view.CUSTOM]
c1, c2 = st.columns([1.3, 1], vertical_alignment="bottom")
preset = c1.selectbox(
    "Device", options, index=options.index(view.CUSTOM), format_func=view.preset_label, key="pl_preset"
)
custom = c2.text_input(
    "Budget",
    value="8 MB",
    key="pl_custom",
    disabled=preset != view.CUSTOM,
    help="e.g. 256 KB, 300 MB, 0.5 GB",
)
if preset in PRESETS:
    st.info(PRESETS[preset].note, icon=":material/memory:")
try:
    budget = view.budget_from_choice(preset, custom)
except BudgetError as exc:
    kept = st.session_state.get("budget_bytes")
    # the reason, and what the other charts still draw (the last budget taken), in place
    keep = f"The Home and Memory Explorer charts keep {format_bytes(kept)}" if kept else ""
    st.error(sentences(str(exc), keep))
    st.stop()
st.session_state["budget_bytes"] = budget.nbytes  # drawn on the Home and Memory Explorer charts too
st.session_state["budget_in_flash"] = budget.weights_in_flash  # (there a note: their totals hold weights)

with st.form("pl_space"):
    names = _cache.backbone_names()
    default_backbones = [settings.backbone] if settings.backbone in names else list(CURATED_BACKBONES[:1])
    backbones = st.multiselect(
        "Backbones",
        names,
        default=default_backbones,
        key="pl_backbones",
        help="Curated CNNs are listed first.",
    )
    curated = st.checkbox(f"All curated backbones ({len(CURATED_BACKBONES)})", key="pl_curated")
    modes = st.multiselect(
        "Modes", list(MODES), default=list(MODES), format_func=lambda m: MODES[m].title, key="pl_modes"
    )  # titles, as the other pages show them
    r1, r2, r3 = st.columns(3)
    resolutions = r1.multiselect(
        "Resolutions (px)",
        sorted({*DEFAULT_RESOLUTIONS, 32, 64, settings.resolution}),
        default=[settings.resolution],
        key="pl_resolutions",
    )
    batch_range = r2.slider("Batch sizes", 1, 256, (1, 64), key="pl_batches")
    classes = r3.number_input("Classes", 2, 10_000, 10, key="pl_classes")
    o1, o2, o3 = st.columns(3)
    optimizer = o1.selectbox("Optimizer", list(OPTIMIZER_STATES), index=2, key="pl_optimizer")
    preset_bits = PRESETS[preset].frozen_weight_bits if preset in PRESETS else 32
    bits = o2.segmented_control(
        "Frozen weights",
        [32, 8],
        default=preset_bits,
        format_func=lambda b: f"{b}-bit",
        key=f"pl_bits_{preset}",
    )
    layers = o3.segmented_control(
        "Layers",
        ["engine", "stock PyTorch"],
        default="engine",
        key="pl_layers",
        help="The training engine stores only what backward needs; stock PyTorch stores more.",
    )
    submitted = st.form_submit_button("Plan", type="primary")

chosen = [*backbones, *(CURATED_BACKBONES if curated else ())]
form_space = SearchSpace(  # what the form shows now (planned when Plan is pressed)
    backbones=tuple(dict.fromkeys(chosen)),
    modes=tuple(modes),
    resolutions=tuple(int(r) for r in resolutions),
    batch_sizes=tuple(range(batch_range[0], batch_range[1] + 1)),
    optimizer=optimizer,
    frozen_weight_bits=int(bits or 32),
    engine=layers != "stock PyTorch",
    num_classes=int(classes),
)
if submitted and not modes:
    st.error("Choose at least one mode.", icon=":material/error:")
elif submitted:
    space = form_space
    bar = st.progress(0.0, text="Planning...")
    try:
        st.session_state["pl_plan"] = plan(
            budget,
            space,
            cache=view.shared_cache(),
            progress=lambda done, total, label: bar.progress(
                done / max(1, total), text=f"{label[0].upper()}{label[1:]}: cached after the first time"
            ),
        )
    except PlanError as exc:
        st.session_state.pop("pl_plan", None)
        st.error(str(exc))
    bar.empty()

result = st.session_state.get("pl_plan")
if result is None:
    st.caption("Choose the search space and press **Plan**.")
    st.stop()
if result.budget != budget:  # the budget changed: re-check the same figures against it (no tracing)
    result = plan(budget, result.space, cache=view.shared_cache())
    st.session_state["pl_plan"] = result
if (changed := view.space_changes(result.space, form_space)) and not submitted:
    st.warning(
        f"The plan below was made with other settings than the form shows ({changed}); press **Plan** to "
        "plan with the form's. The figures and *Train it* are the plan's.",
        icon=":material/sync_problem:",
    )

n_fit = int(result.configs[PLANNED.fits].sum()) if len(result.configs) else 0
m1, m2, m3 = st.columns(3)
m1.metric(
    "Budget", format_bytes(budget.nbytes), help="Frozen weights in flash" if budget.weights_in_flash else None
)
m2.metric("Configurations planned", f"{len(result.configs):,}")
m3.metric("Fit", f"{n_fit:,}")
message = result.nothing_fits_message()
if message:
    st.error(message[0].upper() + message[1:], icon=":material/block:")
for _, s in result.skipped.iterrows():
    st.caption(f"{s['backbone']} {s['mode']} at {s['resolution']} px not planned: {s['reason']}")

accuracy = view.accuracy_runs(view.stored_runs())
measured_sets = sorted(accuracy["dataset"].unique()) if len(accuracy) else []
dataset = st.selectbox("Accuracy on", measured_sets, key="pl_dataset") if measured_sets else None

st.subheader("Per backbone and mode")
st.dataframe(view.summary_table(result), hide_index=True, width="stretch")

if n_fit:
    points = view.chart_points(result, accuracy, dataset)
    paper = None
    p1, p2 = st.columns([1, 2], vertical_alignment="bottom")
    if p1.toggle("Paper's published points", key="pl_paper", help="TinyTL Table 2, as a reference layer"):
        paper_sets = p2.multiselect(
            "Paper's datasets",
            list(PAPER_DATASETS),
            default=[dataset if dataset in PAPER_DATASETS else "flowers102"],
            format_func=PAPER_DATASETS.get,
            key="pl_paper_sets",
        )
        paper = view.paper_points(paper_sets)
        if points["accuracy_mean"].isna().all():
            st.caption("The paper's points need an accuracy axis: no stored run on this dataset fits yet.")
    st.plotly_chart(
        view.planner_figure(
            points, budget, title="What fits: modelled peak vs " + points["y_label"].iloc[0], paper=paper
        ),
        width="stretch",
    )
    st.caption(
        "One point per backbone x mode x resolution that fits, at its largest fitting batch; the Pareto "
        "front is outlined; the dashed line is the budget. Accuracy: your runs (mean ± standard deviation "
        "over seeds) or the bundled reference runs, at the same backbone, mode and resolution and the "
        "same batch size, else the nearest batch measured (then labelled 'at batch N')."
        + (f" Open diamonds: {PAPER_CAPTION}; their own network and datasets." if paper is not None else "")
    )
    st.subheader("What fits")
    table = view.fits_table(result, accuracy, dataset)
    st.dataframe(
        table,
        hide_index=True,
        width="stretch",
        column_config={c: st.column_config.NumberColumn(format="%.2f") for c in table.columns if "(MB)" in c},
    )
    st.download_button(
        "Download every planned configuration (CSV)",
        result.configs.to_csv(index=False),
        file_name="budget_plan.csv",
        mime="text/csv",
    )

    st.subheader("Export or train one configuration")
    fitting = result.fitting.reset_index(drop=True)
    index = st.selectbox(
        "Configuration",
        range(len(fitting)),
        format_func=lambda i: view.config_label(fitting.iloc[i]),
        key="pl_pick",
    )
    row = fitting.iloc[int(index or 0)]
    e1, e2 = st.columns(2)
    with e1:
        if st.button("Prepare the training plan (JSON)", key="pl_export"):
            with st.spinner("Applying the mode and the engine on the meta device..."):
                doc = training_plan(
                    PlanRequest(
                        backbone=row[PLANNED.backbone],
                        mode=row[PLANNED.mode],
                        resolution=int(row[PLANNED.resolution]),
                        batch_size=int(row[PLANNED.batch_size]),
                        optimizer=result.space.optimizer,
                        frozen_weight_bits=result.space.frozen_weight_bits,
                        engine=result.space.engine,
                        num_classes=result.space.num_classes,
                    )
                )
            st.download_button(
                "Download training plan",
                json.dumps(doc, indent=2),
                file_name=f"plan_{row[PLANNED.backbone]}_{row[PLANNED.mode]}_{int(row[PLANNED.resolution])}px.json",
                mime="application/json",
            )
    with e2:
        sets = {d.name: d.title for d in list_datasets()}
        target = st.selectbox("Train on", list(sets), format_func=sets.get, key="pl_train_set")
        if st.button(
            "Train it",
            key="pl_train",
            help=f"Queue a {view.TRAIN_STEPS}-step adaptation of this configuration",
        ):
            try:
                config = view.train_config(row, target, space=result.space, pretrained=settings.pretrained)
            except ValueError as exc:
                st.error(sentences(f"Cannot train this plan: {exc}"), icon=":material/error:")
            else:
                job = view.queue_training(config, owner=settings.session_id or None)
                st.success(
                    f"Queued as job {job}: it trains on a worker and its accuracy shows here when it is done."
                )
