"""Check declared symmetries numerically, and find symmetries from gradients alone.

Two tools (docs/byom.md §3):

* :func:`check_symmetry` — for each symmetry a potential *declares*, the worst ratio
  ``|⟨∇f(q), ξ(q)⟩| / (|∇f(q)| |ξ(q)|)`` over random points q (0 for an exact symmetry,
  up to round-off).
* :func:`audit` — for a potential or a plain function, which of the four families of SPEC
  §0 hold on which candidate blocks, decided from gradients at sample points only.  A
  symmetry with generator ξ holds exactly when ``⟨∇f(q), ξ(q)⟩ = 0`` for every q (the
  infinitesimal form of f(Q(q, s)) = f(q)), and each family makes that condition *linear*
  in its unknowns, so samples decide it:

  ========== =========================== =====================================================
  family     condition at each sample    decided by
  ========== =========================== =====================================================
  scale      ⟨g_B, q_B⟩ = 0              the cosine |⟨g_B, q_B⟩|/(|g_B||q_B|)
  rescale    ⟨g_B1,q_B1⟩ = ⟨g_B2,q_B2⟩   |⟨g_B1,q_B1⟩ − ⟨g_B2,q_B2⟩|/(|g_B1∪B2||q_B1∪B2|)
  translation ⟨g_B, n⟩ = 0, n unknown    the null space of the stacked unit gradients ĝ_B
  rotation   Σ_{i<j} Ω_ij (g_i q_j −     the null space of the stacked unit bivectors
             g_j q_i) = 0, Ω unknown     (g_B ∧ q_B)/(|g_B||q_B|); isotropy (g_B ∥ q_B) first
  ========== =========================== =====================================================

  The *score* of a candidate is the worst |cosine| over the samples (for translation and
  rotation, along the best unit direction — the smallest right singular vector), a number
  in [0, 1]: 0 means exactly symmetric.  Verdicts: ``"holds"`` (score ≤ ``tol``),
  ``"approximate"`` (≤ ``approx_tol``), ``"broken"``, ``"inactive"`` (the gradient on the
  block vanishes at every sample: any family holds trivially) and ``"undetermined"``
  (translation/rotation with too few samples: with S ≤ 2·dim samples an unknown
  direction could fit them by chance, so no verdict is given).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import _validation as V
from .symmetry import FAMILIES, Symmetry, generator, random_skew

__all__ = ["check_symmetry", "SymmetryCheck", "audit", "Audit", "Finding", "candidate_blocks"]

VERDICTS = ("holds", "approximate", "broken", "inactive", "undetermined")


def _verdict(score, tol, approx_tol):
    if not np.isfinite(score):
        return "broken"
    if score <= tol:
        return "holds"
    return "approximate" if score <= approx_tol else "broken"


def _grad_source(potential_or_fn, d=None):
    """(grad(q) -> g, d or None, blocks or None, declared symmetries)."""
    from .potentials import Potential
    if isinstance(potential_or_fn, Potential):
        pot = potential_or_fn
        return (lambda q: pot.value_and_grad(q)[1]), pot.dim, dict(pot.blocks), pot.symmetries
    if not callable(potential_or_fn):
        raise TypeError("potential_or_fn must be a noether_core Potential or a callable "
                        f"fn(q) -> (f, g) or g, got {type(potential_or_fn).__name__}")
    fn = potential_or_fn

    def grad(q):
        out = fn(q)
        g = out[1] if isinstance(out, tuple) else out
        g = np.asarray(g, dtype=np.float64)
        if g.shape != q.shape:
            raise ValueError(f"the function returned a gradient of shape {g.shape}, "
                             f"expected {q.shape}")
        return g
    return grad, d, None, ()


# ---------------------------------------------------------------------------------------
# check_symmetry

@dataclass
class SymmetryCheck:
    """Result of :func:`check_symmetry`.

    Attributes
    ----------
    rows : list of (Symmetry, worst_ratio, verdict)
        Per declared symmetry: the worst |⟨∇f, ξ⟩|/(|∇f||ξ|) over the points and the
        verdict ("holds" ≤ tol, "approximate" ≤ approx_tol, "broken").
    worst : float
        The worst ratio over the *exact* declared symmetries (0.0 if none).
    ok : bool
        Every symmetry declared exact holds, and every inexact one is at least approximate.
    """

    rows: list
    worst: float
    ok: bool
    tol: float
    n_points: int

    def __str__(self):
        lines = [f"check_symmetry over {self.n_points} points (tol {self.tol:g}):"]
        for s, r, v in self.rows:
            lines.append(f"  {s.family:<11} {', '.join(s.blocks):<24} worst "
                         f"|<grad f, xi>|/(|grad f||xi|) = {r:.3e}  {v}"
                         + ("" if s.exact else "  (declared inexact)"))
        lines.append("  OK" if self.ok else "  FAILED")
        return "\n".join(lines)

    __repr__ = __str__


def check_symmetry(potential, n_points=32, seed=None, *, points=None, scale=1.0, tol=1e-8,
                   approx_tol=1e-3, omega=None) -> SymmetryCheck:
    """Verify a potential's declared symmetries numerically at random points.

    Parameters
    ----------
    potential : noether_core.potentials.Potential
        Any potential (built-in, ``Compiled``, ``Python``).
    n_points : int ≥ 1
        Number of random points q ~ N(0, scale²·I) (ignored with ``points=``).
    seed : int, Generator or None
    points : (S, d) array_like, optional
        Use these points instead (e.g. inside a domain the potential needs).
    scale : float > 0
    tol, approx_tol : float
        Verdict thresholds on the ratio (dimensionless).  The default ``tol = 1e-8``
        leaves ~10⁷ ulps for the round-off of an exact gradient.
    omega : (n, n) array or dict block -> array, optional
        Skew matrix for a rotation declared for every Ω; default: a fresh random skew
        matrix at each point.

    Returns
    -------
    SymmetryCheck

    Examples
    --------
    >>> import numpy as np, noether_core as nc
    >>> chk = nc.audit.check_symmetry(nc.potentials.RayleighQuotient(np.diag([1., 2.])),
    ...                                  seed=0)
    >>> chk.ok, chk.rows[0][2], chk.worst < 1e-12
    (True, 'holds', True)
    """
    from .potentials import Potential
    if not isinstance(potential, Potential):
        raise TypeError(f"potential must be a noether_core Potential, got "
                        f"{type(potential).__name__}")
    d = potential.dim
    rng = seed if isinstance(seed, np.random.Generator) else V.as_rng("seed", seed)
    if points is None:
        n_points = V.as_int("n_points", n_points, lo=1)
        V.check_size(f"n_points={n_points} points of dimension {potential.dim}",
                     n_points * potential.dim)
        scale = V.as_scalar("scale", scale, lo=0.0, lo_open=True)
        Q = scale * rng.standard_normal((n_points, d))
    else:
        Q = V.as_float_array("points", points, shape=(None, d))
    tol = V.as_scalar("tol", tol, lo=0.0)
    approx_tol = V.as_scalar("approx_tol", approx_tol, lo=tol)
    rows, worst_exact, ok = [], 0.0, True
    grads = [potential.value_and_grad(q)[1] for q in Q]
    for s in potential.symmetries:
        worst = 0.0
        for q, g in zip(Q, grads, strict=True):
            om = None
            if s.family == "rotation" and s.omega is None:
                n = len(potential.blocks[s.blocks[0]])
                om = (omega.get(s.blocks[0]) if isinstance(omega, dict) else omega)
                if om is None:
                    om = random_skew(n, rng)
            xi = generator(s, q, potential.blocks, omega=om)
            den = np.linalg.norm(g) * np.linalg.norm(xi)
            r = abs(float(g @ xi)) / den if den > 0 else 0.0
            worst = max(worst, r) if np.isfinite(r) else np.inf
        v = _verdict(worst, tol, approx_tol)
        worst = float(worst)
        rows.append((s, worst, v))
        if s.exact:
            worst_exact = max(worst_exact, worst)
            ok &= v == "holds"
        else:
            ok &= v in ("holds", "approximate")
    return SymmetryCheck(rows, worst_exact, bool(ok), tol, len(Q))


# ---------------------------------------------------------------------------------------
# audit

@dataclass
class Finding:
    """One (family, blocks) candidate of an audit.

    Attributes
    ----------
    family : str
    blocks : tuple of str
    score : float
        Worst |cosine| over the samples (see the module docstring); NaN if undetermined.
    verdict : {"holds", "approximate", "broken", "inactive", "undetermined"}
    direction : ndarray or None
        Translation: the fitted unit direction n over the block.
    omega : ndarray or None
        Rotation: the fitted skew matrix Ω (Frobenius norm 1), or None when the block is
        isotropic (``note == "every Omega"``).
    note : str
    """

    family: str
    blocks: tuple
    score: float
    verdict: str
    direction: np.ndarray | None = field(default=None, repr=False)
    omega: np.ndarray | None = field(default=None, repr=False)
    note: str = ""

    def symmetry(self) -> Symmetry:
        """The finding as a :class:`~noether_core.symmetry.Symmetry` (to declare it)."""
        return Symmetry(self.family, self.blocks, exact=self.verdict == "holds",
                        direction=self.direction, omega=self.omega,
                        note=f"audit score {self.score:.2e}" + (
                            f"; {self.note}" if self.note else ""))


@dataclass
class Audit:
    """Result of :func:`audit`: every candidate's finding, and a summary.

    ``findings`` lists, per block, one Finding for each of scale, translation and rotation,
    and the rescale pairs whose verdict is "holds" or "approximate" (the others are only
    counted in ``n_pairs``: there are O(blocks²) of them).
    """

    findings: list
    n_samples: int
    n_pairs: int
    tol: float
    approx_tol: float

    def holding(self, family=None, verdicts=("holds",)) -> list:
        """Findings with a verdict in ``verdicts`` (optionally of one family)."""
        return [f for f in self.findings if f.verdict in verdicts
                and (family is None or f.family == family)]

    def get(self, family, blocks) -> Finding:
        """The finding for ``family`` on ``blocks`` (a name or a tuple of names)."""
        blocks = (blocks,) if isinstance(blocks, str) else tuple(blocks)
        for f in self.findings:
            if f.family == family and f.blocks == blocks:
                return f
        if family == "rescale":
            return Finding("rescale", blocks, np.nan, "broken",
                           note="pair checked, not symmetric (or not a candidate)")
        raise KeyError(f"no {family} candidate on {blocks}")

    def __str__(self):
        counts = {v: 0 for v in VERDICTS}
        for f in self.findings:
            counts[f.verdict] += 1
        lines = [f"symmetry audit: {self.n_samples} samples, {len(self.findings)} findings "
                 f"({', '.join(f'{n} {v}' for v, n in counts.items() if n)}), "
                 f"{self.n_pairs} rescale pairs checked; tol {self.tol:g}, approximate "
                 f"≤ {self.approx_tol:g}"]
        for f in self.findings:
            if f.verdict in ("holds", "approximate"):
                lines.append(f"  {f.family:<11} {' & '.join(f.blocks):<28} score "
                             f"{f.score:.2e}  {f.verdict}" + (f"  ({f.note})" if f.note
                                                              else ""))
        return "\n".join(lines)

    __repr__ = __str__


def candidate_blocks(shapes: dict, columns: bool = True) -> dict:
    """Candidate blocks of a list of tensors stored one after another in a flat q.

    ``shapes``: ordered dict name -> shape (e.g. ``{n: p.shape for n, p in
    model.named_parameters()}``).  Returns name -> index array with, for each tensor, the
    whole tensor ``"name"`` and, for tensors of ≥ 2 dimensions, each row ``"name[i]"``
    (every weight of output unit i of a Linear/Conv weight) and, with ``columns``, each
    column ``"name[:,j]"`` (every weight reading input j).  Row i of one layer against
    column i of the next is the rescale pair of a ReLU/linear unit i between them; the
    audit checks every disjoint pair, so it finds those without being told the order.
    """
    if not hasattr(shapes, "items"):
        raise TypeError(f"shapes must be a dict name -> shape, got {type(shapes).__name__}")
    columns = V.as_bool("columns", columns)
    out, off = {}, 0
    for name, shape in shapes.items():
        shape = tuple(int(s) for s in shape)
        n = int(np.prod(shape)) if shape else 1
        idx = off + np.arange(n)
        out[name] = idx
        if len(shape) >= 2:
            per = idx.reshape(shape[0], shape[1], -1)
            for i in range(shape[0]):
                out[f"{name}[{i}]"] = per[i].ravel()
            if columns:
                for j in range(shape[1]):
                    out[f"{name}[:,{j}]"] = per[:, j].ravel()
        off += n
    return out


def _null_fit(M):
    """Best unit v with M v ≈ 0: (v, max_s |M_s·v|)."""
    _, _, vt = np.linalg.svd(M, full_matrices=True)
    v = vt[-1]
    return v, float(np.max(np.abs(M @ v)))


def audit(potential_or_fn, q_samples, blocks=None, *, tol=1e-8, approx_tol=1e-3,
          families=FAMILIES, max_pairs=200_000, rotation_max_block=16) -> Audit:
    """Which symmetry families hold on which blocks, from gradients at sample points.

    Parameters
    ----------
    potential_or_fn : Potential or callable
        A potential, or ``fn(q)`` returning ``(f, g)`` or ``g`` for a flat q.
    q_samples : (S, d) array_like
        Sample points (random, spread over the region of interest; ≥ 2·|B| + 1 of them to
        decide a translation on block B, ≥ |B|(|B|−1) + 1 for a non-isotropic rotation).
    blocks : dict name -> index array, optional
        Candidate blocks (may overlap).  Default: the potential's named blocks, or one
        block "q" for a function; :func:`candidate_blocks` builds per-row, per-column and
        per-tensor
        candidates from tensor shapes.  Rescale candidates are all ordered pairs of
        blocks (B1 before B2 in dict order) that are disjoint and neither scale-symmetric
        alone — at most ``max_pairs`` of them (otherwise only consecutive pairs).
    tol, approx_tol : float
        Verdict thresholds on the score (see the module docstring).
    families : sequence of str
        Families to test.
    rotation_max_block : int
        Non-isotropic rotations are fitted only on blocks up to this size (the unknown Ω
        has |B|(|B|−1)/2 entries).

    Returns
    -------
    Audit

    Notes
    -----
    Cost: one gradient per sample, then O(S·d) for scale/rescale, one SVD of S × |B| per
    block for translation and of S × |B|(|B|−1)/2 for rotation.

    Examples
    --------
    >>> import numpy as np, noether_core as nc
    >>> pot = nc.potentials.RayleighQuotient(np.diag([1.0, 2.0, 3.0]))
    >>> res = nc.audit.audit(pot, np.random.default_rng(0).standard_normal((16, 3)))
    >>> [(f.family, f.blocks) for f in res.holding()]
    [('scale', ('q',))]
    """
    Q = V.as_float_array("q_samples", q_samples, ndim=2)
    S, d = Q.shape
    grad, dim, pblocks, _ = _grad_source(potential_or_fn, d)
    if dim is not None and dim != d:
        raise ValueError(f"q_samples has {d} columns, the potential has dimension {dim}")
    tol = V.as_scalar("tol", tol, lo=0.0)
    approx_tol = V.as_scalar("approx_tol", approx_tol, lo=tol)
    for f in families:
        if f not in FAMILIES:
            raise ValueError(f"families: unknown family {f!r}; known: {FAMILIES}")
    if blocks is None:
        blocks = pblocks if pblocks is not None else {"q": np.arange(d)}
    blocks = {str(k): V.as_index_array(f"blocks[{k!r}]", v, d) for k, v in blocks.items()}
    G = np.stack([grad(q.copy()) for q in Q])
    if not np.all(np.isfinite(G)):
        s = int(np.argwhere(~np.isfinite(G))[0, 0])
        raise ValueError(f"the gradient is not finite at q_samples[{s}]")

    findings, sdot, gn, qn, scale_ok = [], {}, {}, {}, set()
    for name, idx in blocks.items():
        gB, qB = G[:, idx], Q[:, idx]
        sdot[name] = np.einsum("si,si->s", gB, qB)
        gn[name] = np.einsum("si,si->s", gB, gB)
        qn[name] = np.einsum("si,si->s", qB, qB)
        active = gn[name] > 0
        if not active.any():
            for fam in families:
                if fam != "rescale":
                    findings.append(Finding(fam, (name,), 0.0, "inactive",
                                            note="zero gradient at every sample"))
            continue
        if "scale" in families:
            den = np.sqrt(gn[name] * qn[name])
            ok = den > 0
            sc = float(np.max(np.abs(sdot[name][ok]) / den[ok])) if ok.any() else 0.0
            v = _verdict(sc, tol, approx_tol)
            findings.append(Finding("scale", (name,), sc, v))
            if v == "holds":
                scale_ok.add(name)
        if "translation" in families:
            M = gB[active] / np.sqrt(gn[name][active])[:, None]
            if M.shape[0] <= 2 * len(idx):
                findings.append(Finding("translation", (name,), np.nan, "undetermined",
                                        note=f"needs > {2 * len(idx)} samples with a "
                                             "non-zero gradient"))
            else:
                n, sc = _null_fit(M)
                n = n * np.sign(n[np.argmax(np.abs(n))])
                findings.append(Finding("translation", (name,), sc,
                                        _verdict(sc, tol, approx_tol), direction=n))
        if "rotation" in families and len(idx) >= 2:
            findings.append(_rotation(gB[active], qB[active], tol, approx_tol,
                                      rotation_max_block, name))

    n_pairs = 0
    span = {id(v): (v.min(), v.max()) for v in blocks.values()}
    if "rescale" in families:
        names = [n for n in blocks if gn[n].any()]
        pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
        if len(pairs) > max_pairs:
            pairs = list(zip(names[:-1], names[1:], strict=True))
        for a, b in pairs:
            if a in scale_ok or b in scale_ok or _overlap(blocks[a], blocks[b], span):
                continue
            n_pairs += 1
            den = np.sqrt((gn[a] + gn[b]) * (qn[a] + qn[b]))
            ok = den > 0
            sc = float(np.max(np.abs(sdot[a] - sdot[b])[ok] / den[ok]))
            v = _verdict(sc, tol, approx_tol)
            if v in ("holds", "approximate"):
                findings.append(Finding("rescale", (a, b), sc, v))
    return Audit(findings, S, n_pairs, tol, approx_tol)


def _overlap(a, b, span):
    (a0, a1), (b0, b1) = span[id(a)], span[id(b)]
    if a1 < b0 or b1 < a0:
        return False
    return np.intersect1d(a, b, assume_unique=True).size > 0


def _rotation(gB, qB, tol, approx_tol, max_block, name):
    n = gB.shape[1]
    norms = np.linalg.norm(gB, axis=1) * np.linalg.norm(qB, axis=1)
    ok = norms > 0
    gB, qB, norms = gB[ok], qB[ok], norms[ok]
    iu, ju = np.triu_indices(n, 1)
    # bivector components g_i q_j − g_j q_i (i < j), normalised by |g||q|
    Mb = (gB[:, iu] * qB[:, ju] - gB[:, ju] * qB[:, iu]) / norms[:, None]
    iso = float(np.max(np.linalg.norm(Mb, axis=1))) if len(Mb) else 0.0
    if iso <= tol:
        return Finding("rotation", (name,), iso, "holds", note="every Omega (isotropic)")
    m = len(iu)
    if n > max_block or Mb.shape[0] <= 2 * m:
        return Finding("rotation", (name,), np.nan, "undetermined",
                       note=(f"block larger than rotation_max_block={max_block}"
                             if n > max_block else f"needs > {2 * m} samples"))
    # ⟨g, Ωq⟩ = Σ_{i<j} Ω_ij (g_i q_j − g_j q_i) for skew Ω
    w, sc = _null_fit(Mb)
    om = np.zeros((n, n))
    om[iu, ju] = w
    om[ju, iu] = -w
    om /= np.linalg.norm(om)
    return Finding("rotation", (name,), sc, _verdict(sc, tol, approx_tol), omega=om)
