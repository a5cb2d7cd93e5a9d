"""MR-zero's documented public API, as data: what ``import mr0core as mr0`` must provide.

Source: MR-zero's documentation (``shared/seeds/000_1187fd423cba8e8d.txt``: the API overview and
the pages it links, the util module, the FAQ and integration pages). One :class:`Entry` per
documented name: module-level functions, classes (their constructor), their public methods,
properties and attributes, constants and enum members.

``sig`` is the signature without ``self``/``cls``, written as Python (``inf`` and
``tensor([...])`` are allowed in defaults). Where the installed MRzeroCore 1.2.0 (what users run)
differs from the documentation, ``sig`` follows 1.2.0 and ``note`` says what the documentation
writes. ``test_api_walk.py`` checks mr0core against this list, and (``reference`` marker) checks
this list and mr0core against the installed MRzeroCore.

Only names MR-zero documents are listed: MRzeroCore 1.2.0 also exports undocumented names
(``fid_graph``, ``merge_graphs``, ``ResliceConfig``, ``util.pulseq_plot_15``,
``Sequence.get_adc_labels``, ``Sequence.get_label_changes``, ``TissueDict.plot``,
``TissueDict.recover``, ``CustomVoxelPhantom.generate_maps``), which are not part of this walk.
The documentation's pulseq-zero rounding helpers (``ceil``, ``floor``, ``round``) belong to the
``pulseqzero`` package, not to MR-zero Core, and are not listed either.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class Entry(NamedTuple):
    """One documented public name.

    Attributes
    ----------
    path
        Dotted path below the package: ``"util.simulate"``, ``"SimData.build"``.
    kind
        ``module``, ``function``, ``class`` (``sig`` is the constructor's), ``method``,
        ``classmethod``, ``property``, ``attribute`` (instance attribute), ``constant`` or
        ``member`` (an enum member; ``value`` is its value).
    sig
        Parameters, e.g. ``"(seq, phantom=None)"``; None where the documentation gives none.
    returns
        Return type the documentation states (checked against our annotation), else None.
    value
        Value of a constant or enum member.
    optional
        Parameters that MRzeroCore 1.2.0 requires and mr0core gives a default (every call valid
        for MR-zero stays valid; the documentation shows them with defaults or omits them).
    deviations
        ``{parameter: reason}``: deliberate differences of mr0core's default.
    ref
        Path in MRzeroCore 1.2.0 where it differs from ``path``; ``""``: not in 1.2.0.
    blocked
        Non-empty: a known gap that cannot be fixed in this change, and why (the test expects
        it to fail until it is fixed).
    note
        What the documentation says where 1.2.0 differs, and other remarks.
    """

    path: str
    kind: str
    sig: str | None = None
    returns: str | None = None
    value: Any = None
    optional: tuple[str, ...] = ()
    deviations: dict[str, str] = {}  # noqa: RUF012 (read-only data)
    ref: str | None = None
    blocked: str = ""
    note: str = ""


_NIFTI_REF = "phantom.nifti_phantom."

API: list[Entry] = [
    # ---------------------------------------------------------------- sequence building blocks
    Entry("Sequence", "class", "(repetitions=[], normalized_grads=True)",
          note="doc: Sequence(repetitions, normlized_grads=True) (sic), table: normalize_grads; "
               "1.2.0: normalized_grads, repetitions defaults to []"),
    Entry("Sequence.cpu", "method", "()", returns="Sequence"),
    Entry("Sequence.cuda", "method", "()", returns="Sequence",
          note="doc: cuda(device=None); 1.2.0 has no device parameter"),
    Entry("Sequence.device", "property", returns="device"),
    Entry("Sequence.clone", "method", "()", returns="Sequence"),
    Entry("Sequence.new_rep", "method", "(event_count)", returns="Repetition"),
    Entry("Sequence.get_kspace", "method", "()", returns="Tensor"),
    Entry("Sequence.get_full_kspace", "method", "()", returns="list"),
    Entry("Sequence.plot_kspace_trajectory", "method",
          "(figsize=(5, 5), plotting_dims='xy', plot_timeline=True)",
          note="doc: plot_kspace_trajectory() without parameters"),
    Entry("Sequence.get_contrast_mask", "method", "(contrast)", returns="Tensor"),
    Entry("Sequence.get_contrasts", "method", "()", returns="list"),
    Entry("Sequence.shift_contrasts", "method", "(offset)"),
    Entry("Sequence.get_duration", "method", "()", returns="float"),
    Entry("Sequence.import_file", "classmethod",
          "(file_name, exact_trajectories=True, print_stats=False, "
          "default_shim=tensor([[1.0, 0.0]]), ref_voltage=300.0, resolution=None, "
          "backend='pulseq_rs', larmor_hz=None, fov_scale=None, fov_pos=None, fov_rot=None, "
          "soft_delays=None, output_dir=None)",
          returns="Sequence",
          note="doc: (file_name, exact_trajectories, print_stats, default_shim, ref_voltage, "
               "resolution) without defaults; 1.2.0 adds the defaults and backend … output_dir"),
    Entry("Sequence.from_seq_file", "classmethod", "(file_name)", returns="Sequence",
          note="FAQ: the alternative importer for Pulseq 1.3"),
    Entry("chain", "function", "(*sequences, oneshot=False)", returns="Sequence"),
    Entry("Repetition", "class", "(pulse, event_time, gradm, adc_phase, adc_usage)"),
    Entry("Repetition.event_count", "property", returns="int"),
    Entry("Repetition.cpu", "method", "()", returns="Repetition"),
    Entry("Repetition.cuda", "method", "(device=None)", returns="Repetition"),
    Entry("Repetition.device", "property", returns="device"),
    Entry("Repetition.zero", "classmethod", "(event_count)", returns="Repetition"),
    Entry("Repetition.clone", "method", "()", returns="Repetition"),
    Entry("Repetition.get_contrasts", "method", "()", returns="list"),
    Entry("Repetition.shift_contrasts", "method", "(offset)"),
    Entry("Repetition.pulse", "attribute"),
    Entry("Repetition.event_time", "attribute"),
    Entry("Repetition.gradm", "attribute"),
    Entry("Repetition.adc_phase", "attribute"),
    Entry("Repetition.adc_usage", "attribute"),
    Entry("Pulse", "class",
          "(usage, angle, phase, pulse_freq, freq_offset, duration, grad, off_res, shim_array, "
          "selective)",
          optional=("pulse_freq", "freq_offset", "duration", "grad", "off_res", "shim_array",
                    "selective"),
          note="doc: Pulse(usage, angle, phase, shim_array, selective); 1.2.0 inserts the "
               "off-resonant pulse parameters before shim_array and requires all"),
    Entry("Pulse.cpu", "method", "()", returns="Pulse"),
    Entry("Pulse.cuda", "method", "(device=None)", returns="Pulse"),
    Entry("Pulse.device", "property", returns="device"),
    Entry("Pulse.zero", "classmethod", "()", returns="Pulse"),
    Entry("Pulse.clone", "method", "()", returns="Pulse"),
    Entry("Pulse.usage", "attribute"),
    Entry("Pulse.angle", "attribute"),
    Entry("Pulse.phase", "attribute"),
    Entry("Pulse.shim_array", "attribute"),
    Entry("Pulse.selective", "attribute"),
    Entry("PulseUsage", "class", None),
    Entry("PulseUsage.UNDEF", "member", value="undefined"),
    Entry("PulseUsage.EXCIT", "member", value="excitation"),
    Entry("PulseUsage.REFOC", "member", value="refocussing"),
    Entry("PulseUsage.STORE", "member", value="storing"),
    Entry("PulseUsage.FATSAT", "member", value="fatsaturation"),
    # ---------------------------------------------------------------- simulation data
    Entry("SimData", "class",
          "(PD, T1, T2, T2dash, D, B0, B1, coil_sens, size, affine, voxel_pos, nyquist, "
          "dephasing_func, recover_func=None, phantom_motion=None, voxel_motion=None, "
          "tissue_masks=None)",
          note="doc: no affine; 1.2.0 has it between size and voxel_pos"),
    Entry("SimData.cpu", "method", "()", returns="SimData"),
    Entry("SimData.cuda", "method", "()", returns="SimData"),
    Entry("SimData.device", "property", returns="device"),
    Entry("SimData.recover", "method", "()"),
    *[Entry(f"SimData.{name}", "attribute") for name in (
        "PD", "T1", "T2", "T2dash", "D", "B0", "B1", "coil_sens", "size", "voxel_pos",
        "nyquist", "dephasing_func", "recover_func", "phantom_motion", "voxel_motion",
        "tissue_masks")],
    Entry("VoxelGridPhantom", "class",
          "(PD, T1, T2, T2dash, D, B0, B1, coil_sens, affine, phantom_motion=None, "
          "voxel_motion=None, tissue_masks=None)",
          optional=("affine",),
          note="doc: size where 1.2.0 has affine (both accepted there; size= also by keyword)"),
    Entry("VoxelGridPhantom.load", "classmethod", "(file_name)", returns="VoxelGridPhantom"),
    Entry("VoxelGridPhantom.load_mat", "classmethod",
          "(file_name, T2dash=0.03, D=1.0, size=[0.2, 0.2, 0.008])", returns="VoxelGridPhantom",
          note="doc: load_mat(file_name, ...)"),
    Entry("VoxelGridPhantom.brainweb", "classmethod", "(file_name)", returns="VoxelGridPhantom",
          note="used by the documentation's examples"),
    Entry("VoxelGridPhantom.slices", "method", "(slices)", returns="VoxelGridPhantom"),
    Entry("VoxelGridPhantom.scale_fft", "method", "(x, y, z)", returns="VoxelGridPhantom",
          note="doc: scale_fft()"),
    Entry("VoxelGridPhantom.interpolate", "method", "(x, y, z)", returns="VoxelGridPhantom",
          note="doc: interpolate()"),
    Entry("VoxelGridPhantom.plot", "method",
          "(plot_masks=False, plot_slice='center', time_unit='s', title=None)",
          note="doc: plot()"),
    Entry("VoxelGridPhantom.build", "method", "(PD_threshold=1e-06, voxel_shape='sinc')",
          returns="SimData", note="doc: build(PD_threshold)"),
    *[Entry(f"VoxelGridPhantom.{name}", "attribute") for name in (
        "PD", "T1", "T2", "T2dash", "D", "B0", "B1", "coil_sens", "size", "phantom_motion",
        "voxel_motion", "tissue_masks")],
    Entry("TissueDict", "class", None, note="doc: TissueDict(dict[str, VoxelGridPhantom])"),
    Entry("TissueDict.load", "classmethod", "(path, config=None)", returns="TissueDict"),
    Entry("TissueDict.save", "method", "(path_to_json, gyro=42.5764, B0=3.0)",
          deviations={"gyro": "None: the TissueDict's own system (a loaded 7 T phantom stays 7 T)",
                      "B0": "None: the TissueDict's own system"},
          note="doc: save(path, gyro, B0); 1.2.0: path_to_json"),
    Entry("TissueDict.interpolate", "method", "(x, y, z)"),
    Entry("TissueDict.slices", "method", "(slices)"),
    Entry("TissueDict.combine", "method", "()", returns="VoxelGridPhantom"),
    Entry("TissueDict.build", "method", "(PD_threshold=1e-06, voxel_shape='sinc')",
          returns="SimData"),
    Entry("CustomVoxelPhantom", "class",
          "(pos, PD=1.0, T1=1.5, T2=0.1, T2dash=0.05, D=1.0, B0=0.0, B1=1.0, voxel_size=0.1, "
          "voxel_shape='sinc')"),
    Entry("CustomVoxelPhantom.generate_PD_map", "method", "()", returns="Tensor"),
    Entry("CustomVoxelPhantom.plot", "method", "()"),
    Entry("CustomVoxelPhantom.build", "method", "()", returns="SimData"),
    *[Entry(f"CustomVoxelPhantom.{name}", "attribute", ref="" if name == "size" else None)
      for name in ("PD", "T1", "T2", "T2dash", "D", "B0", "B1", "size")],
    # ---------------------------------------------------------------- NIfTI phantoms
    Entry("PhantomUnits", "class", "(gyro, B0, T1, T2, T2dash, ADC, dB0, B1_tx, B1_rx)",
          optional=("gyro", "B0", "T1", "T2", "T2dash", "ADC", "dB0", "B1_tx", "B1_rx"),
          ref=_NIFTI_REF + "PhantomUnits", note="1.2.0 does not export it at the top level"),
    Entry("PhantomUnits.default", "classmethod", "()", returns="PhantomUnits",
          ref=_NIFTI_REF + "PhantomUnits.default"),
    Entry("PhantomUnits.from_dict", "classmethod", "(config)", returns="PhantomUnits",
          ref=_NIFTI_REF + "PhantomUnits.from_dict"),
    Entry("PhantomUnits.to_dict", "method", "()", returns="dict",
          ref=_NIFTI_REF + "PhantomUnits.to_dict"),
    Entry("PhantomSystem", "class", "(gyro, B0)", optional=("gyro", "B0"),
          ref=_NIFTI_REF + "PhantomSystem", note="doc defaults: 42.5764 MHz/T, 3.0 T"),
    Entry("PhantomSystem.from_dict", "classmethod", "(config)", returns="PhantomSystem",
          ref=_NIFTI_REF + "PhantomSystem.from_dict"),
    Entry("PhantomSystem.to_dict", "method", "()", returns="dict",
          ref=_NIFTI_REF + "PhantomSystem.to_dict"),
    Entry("NiftiRef", "class", "(file_name, tissue_index)"),
    Entry("NiftiRef.parse", "classmethod", "(config)", returns="NiftiRef"),
    Entry("NiftiRef.to_str", "method", "()", returns="str"),
    Entry("NiftiMapping", "class", "(file, func)"),
    Entry("NiftiMapping.parse", "classmethod", "(config)", returns="NiftiMapping"),
    Entry("NiftiMapping.to_dict", "method", "()", returns="dict"),
    Entry("NiftiTissue", "class", "(density, T1, T2, T2dash, ADC, dB0, B1_tx, B1_rx)",
          optional=("T1", "T2", "T2dash", "ADC", "dB0", "B1_tx", "B1_rx"),
          note="doc: defaults inf, inf, inf, 0, 0, [1], [1] (ours); 1.2.0 requires all"),
    Entry("NiftiTissue.default", "classmethod", "(density)", returns="NiftiTissue"),
    Entry("NiftiTissue.from_dict", "classmethod", "(config)", returns="NiftiTissue"),
    Entry("NiftiTissue.to_dict", "method", "()", returns="dict"),
    Entry("NiftiPhantom", "class", "(units, system, tissues, reslice_to=None)",
          note="doc: (units, system, tissues); 1.2.0 adds reslice_to"),
    Entry("NiftiPhantom.file_type", "constant", value="nifti_phantom_v1", ref="",
          note="doc: class attribute; 1.2.0 has schema_uri instead"),
    Entry("NiftiPhantom.default", "classmethod", "(gyro=42.5764, B0=3.0)",
          returns="NiftiPhantom", note="doc: B0=3"),
    Entry("NiftiPhantom.load", "classmethod", "(path)", returns="NiftiPhantom"),
    Entry("NiftiPhantom.save", "method", "(path)"),
    Entry("NiftiPhantom.from_dict", "classmethod", "(config)", returns="NiftiPhantom"),
    Entry("NiftiPhantom.to_dict", "method", "()", returns="dict"),
    # ---------------------------------------------------------------- simulation
    Entry("compute_graph", "function",
          "(seq, data, max_state_count=200, min_state_mag=0.0001, tissues=None, threaded=True)",
          returns="Graph",
          note="doc: (seq, data, max_state_count, min_state_mag); 1.2.0 adds tissues, threaded"),
    Entry("compute_graph_ext", "function",
          "(seq, T1, T2, T2dash, D, max_state_count=200, min_state_mag=0.0001, "
          "nyquist=(inf, inf, inf), size=(1.0, 1.0, 1.0), avg_b1_trig=None)",
          returns="Graph",
          note="doc: no defaults and no avg_b1_trig"),
    Entry("execute_graph", "function",
          "(graph, seq, data, min_emitted_signal=0.01, min_latent_signal=0.01, "
          "print_progress=True, return_mag_adc=False, clear_state_mag=True, intitial_mag=None)",
          returns="Tensor", note="intitial_mag (sic), as documented"),
    Entry("Graph", "class", None, note="doc: a wrapper of the returned graph"),
    Entry("Graph.plot", "method",
          "(transversal_mag=True, dephasing='tau', color='latent signal', log_color=True)"),
    Entry("Graph.plot_data", "method",
          "(transversal_mag=True, dephasing='tau', color='latent signal')"),
    Entry("isochromat_sim", "function",
          "(seq, data, spin_count, perfect_spoiling=False, print_progress=True, "
          "spin_dist='rand', r2_seed=None)", returns="Tensor"),
    # ---------------------------------------------------------------- reconstruction
    Entry("reco_adjoint", "function",
          "(signal, kspace, resolution=None, FOV=None, return_multicoil=False)",
          returns="Tensor"),
    # ---------------------------------------------------------------- util module
    Entry("util", "module"),
    Entry("util.get_signal_from_real_system", "function",
          "(path, NRep, NRead, ncoils=20, heuristic_shift=4)",
          note="needs a scanner: raises NotImplementedError in mr0core"),
    Entry("util.insert_signal_plot", "function", "(seq, signal, ax=None)",
          note="doc: (seq, signal); 1.2.0 adds ax"),
    Entry("util.pulseq_plot", "function",
          "(seq, type='Gradient', time_range=(0, inf), time_disp='s', show_blocks=False, "
          "clear=False, signal=None, figid=(1, 2), stacked=True)",
          note="doc: no stacked; 1.2.0 adds it"),
    Entry("util.pulseq_plot_142", "function",
          "(seq, label='', show_blocks=False, save=False, time_range=(0, inf), time_disp='s', "
          "grad_disp='kHz/m', plot_now=True, figid=(1, 2), stacked=True, clear=False)",
          returns="Axes", note="doc: returns the generated axes; 1.2.0 adds figid, stacked, "
          "clear and returns (ADC axes, ADC sample times)"),
    Entry("util.pulseq_plot_pre14", "function",
          "(seq, type='Gradient', time_range=(0, inf), time_disp='s', clear=False, signal=0, "
          "figid=(1, 2), stacked=True)", note="doc: no stacked; 1.2.0 adds it"),
    Entry("util.imshow", "function", "(data, *args, **kwargs)",
          note="doc: imshow(reco, *args, **kwargs); 1.2.0 names it data"),
    Entry("util.load_phantom", "function",
          "(size=None, url='https://github.com/MRsources/MRzero-Core/raw/main/documentation/"
          "playground_mr0/numerical_brain_cropped.mat', dB0_fB0=(0, 1), dB1_fB1=(0, 1), "
          "B0_polynomial=None)", returns="VoxelGridPhantom"),
    Entry("util.DEFAULT_PHANTOM_URL", "constant",
          value="https://github.com/MRsources/MRzero-Core/raw/main/documentation/"
                "playground_mr0/numerical_brain_cropped.mat"),
    Entry("util.simulate", "function",
          "(seq, phantom=None, sim_size=None, accuracy=0.001, noise_level=None)"),
    Entry("util.simulate_2d", "function",
          "(seq, sim_size=None, noise_level=0, dB0=0, B0_scale=1, B0_polynomial=None)",
          note="deprecated in MR-zero"),
    # ---------------------------------------------------------------- other methods
    Entry("generate_brainweb_phantoms", "function", "(output_dir, subject_count=None)",
          note="doc: (outpub_dir (sic), config); 1.2.0: (output_dir, subject_count=None)"),
    Entry("sig_to_mrd", "function", "(mrd_path, mr0_signal, seq, verbose=0)"),
    Entry("pulseq_write_cartesian", "function",
          "(seq_param, path, FOV, plot_seq=False, num_slices=1, write_data=1)"),
]  # fmt: skip
