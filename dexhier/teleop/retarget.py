"""Hand keypoints to hand joints: vector retargeting onto the twin's LEAP-like hand.

Input: 21 human hand keypoints (m, MediaPipe / MANO order: 0 wrist, thumb 1-4, index 5-8,
middle 9-12, ring 13-16, pinky 17-20; tips 4, 8, 12, 16, 20) in the operator's *wrist frame*:
origin at the wrist (keypoint 0), +x from the wrist towards the middle finger's MCP (keypoint 9),
+z out of the back of the hand (dorsal), +y = z x x. For a right hand +y points to the thumb
side; for a left hand, to the little-finger side.

Robot side: the hand's palm frame (``sim.robots.leap_like_hand``). At q = 0 all fingers and the
thumb point along +z; index / middle / ring sit at x = -0.045 / 0 / +0.045 on the +y edge and flex
towards -y; the thumb sits on the -y edge and flexes towards +y. That layout is the mirror image
of a human right hand (fingers x index side = palmar, where a right hand has dorsal), so the
default ``operator_to_hand`` for a right operator hand is a reflection (det -1); a left operator
hand maps with a proper rotation (``OPERATOR_LEFT_TO_HAND``).

Method (the "vector" objective of dex-retargeting, written from scratch): with wrist-to-tip
vectors v_h (human tips 4, 8, 12, 16; pinky unused) and v_r(q) (robot ``{th,if,mf,rf}_tip``
sites relative to a virtual wrist point in the palm frame), minimise

    E(q) = sum_i huber(|s R v_h,i - v_r,i(q)|) + lambda |q - q_prev|^2

over q in the joint limits, by a few Levenberg-Marquardt steps (Huber by reweighting, Jacobians
from ``mj_jacSite``, steps projected onto the limits), warm-started from the previous solution.
The output is low-pass filtered: q_out = alpha q + (1 - alpha) q_out_prev.
"""

from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numpy as np

from sim.robots import leap_like_hand

FINGERS: tuple[str, ...] = ("th", "if", "mf", "rf")
"""Robot fingers in the order of the retargeted vectors."""

HUMAN_TIPS: tuple[int, ...] = (4, 8, 12, 16)
"""Human keypoint of each robot finger's tip (thumb, index, middle, ring)."""

HUMAN_HAND_LENGTH = 0.18
"""Typical adult wrist-to-middle-fingertip distance, m (keypoint 0 to 12 of an open hand)."""

Matrix3 = tuple[tuple[float, float, float], tuple[float, float, float], tuple[float, float, float]]

# Columns: where the human wrist frame's x (along the fingers), y, z (dorsal) go in the palm frame.
OPERATOR_RIGHT_TO_HAND: Matrix3 = ((0.0, -1.0, 0.0), (0.0, 0.0, 1.0), (1.0, 0.0, 0.0))
"""Right operator hand -> palm frame: fingers -> +z, thumb side -> -x (index side), dorsal -> +y.
A reflection (det -1): the twin's hand is laid out as the mirror image of a right hand."""
OPERATOR_LEFT_TO_HAND: Matrix3 = ((0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (1.0, 0.0, 0.0))
"""Left operator hand -> palm frame: fingers -> +z, thumb side (-y for a left hand) -> -x,
dorsal -> +y. A proper rotation."""

# Virtual robot wrist: on the line of the finger bases (y = 0.036, so a flat human hand maps to
# straight robot fingers) and one finger length (MCP to tip 0.138 m) behind the bases
# (z = 0.03 - 0.138), so the robot's palm : finger proportion is the human's ~1 : 1.
LEAP_LIKE_WRIST: tuple[float, float, float] = (0.0, 0.036, -0.108)

# Bodies whose origins stand in for the human keypoints of each finger (MCP, PIP, DIP; thumb
# CMC, MCP, IP) when synthesising keypoints from a robot posture.
_CHAIN_BODIES = {
    "th": ("th_cmc_link", "th_mcp_link", "th_ipl_link"),
    **{f: (f"{f}_mcp_link", f"{f}_pip_link", f"{f}_dip_link") for f in ("if", "mf", "rf")},
}
_HUMAN_CHAINS = {"th": (1, 2, 3, 4), "if": (5, 6, 7, 8), "mf": (9, 10, 11, 12), "rf": (13, 14, 15, 16)}


@dataclass(frozen=True)
class RetargetConfig:
    """Retargeting parameters.

    Attributes:
        scaling: s, human-to-robot length factor applied to the wrist-to-tip vectors. None: from
            the model, |wrist -> middle tip| at q = 0 over ``HUMAN_HAND_LENGTH`` (about 1.53 for
            the LEAP-like hand with the default wrist; dex-retargeting uses 1.6 for LEAP).
        operator_to_hand: (3, 3) orthonormal matrix taking wrist-frame vectors into the palm
            frame (a rotation, or a reflection when the operator's hand is the robot's mirror).
        wrist_in_palm: (3,) m, the palm-frame point that plays the human wrist.
        huber_delta: m (robot scale); tip errors above it are penalised linearly.
        regularization: lambda, m^2/rad^2, weight of |q - q_prev|^2. It picks among redundant
            solutions and keeps them continuous; kept small (1 rad costs as much as a 1.4 mm tip
            error) so it does not bias the fit; smoothing proper is ``alpha``.
        iterations: Levenberg-Marquardt steps per call (>= 1).
        damping: initial Levenberg-Marquardt damping, m^2/rad^2.
        restart_error: m; when a finger's tip stays further than this from its target after the
            warm-started solve, a second solve from mid-range runs and wins per finger if better.
        alpha: low-pass factor in (0, 1]; 1 = no filtering.
    """

    scaling: float | None = None
    operator_to_hand: Matrix3 = OPERATOR_RIGHT_TO_HAND
    wrist_in_palm: tuple[float, float, float] = LEAP_LIKE_WRIST
    huber_delta: float = 0.02
    regularization: float = 1e-6
    iterations: int = 12
    damping: float = 1e-4
    restart_error: float = 0.003
    alpha: float = 0.5

    def __post_init__(self) -> None:
        R = np.asarray(self.operator_to_hand, dtype=np.float64)
        if R.shape != (3, 3) or not np.all(np.isfinite(R)):
            raise ValueError(f"operator_to_hand must be a finite 3x3 matrix, got {R.tolist()}")
        if not np.allclose(R @ R.T, np.eye(3), atol=1e-6):
            raise ValueError(f"operator_to_hand is not orthonormal: {R.tolist()}")
        # Store as nested tuples: the config stays hashable and immutable even if given an array.
        object.__setattr__(self, "operator_to_hand", tuple(tuple(float(x) for x in row) for row in R))
        w = np.asarray(self.wrist_in_palm, dtype=np.float64)
        if w.shape != (3,) or not np.all(np.isfinite(w)):
            raise ValueError(f"wrist_in_palm must be 3 finite numbers, got {self.wrist_in_palm}")
        object.__setattr__(self, "wrist_in_palm", tuple(float(x) for x in w))
        if self.scaling is not None and not (np.isfinite(self.scaling) and self.scaling > 0):
            raise ValueError(f"scaling must be > 0, got {self.scaling}")
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {self.alpha}")
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")
        if not self.huber_delta > 0:
            raise ValueError(f"huber_delta must be > 0, got {self.huber_delta}")
        if not self.regularization >= 0:
            raise ValueError(f"regularization must be >= 0, got {self.regularization}")
        if not self.damping > 0:
            raise ValueError(f"damping must be > 0, got {self.damping}")
        if not self.restart_error > 0:
            raise ValueError(f"restart_error must be > 0, got {self.restart_error}")


class HandRetargeter:
    """Maps a stream of human hand keypoints to joint positions of the robot hand.

    Stateful: each call warm-starts from, regularises towards and filters with the previous one;
    call ``reset`` when the stream restarts (new episode, hand re-detected).

    Attributes:
        joint_names: the hand's joints, in the order of every q array here (model order).
        lower, upper: (n,) joint limits, rad.
        scaling: the s in use (from the config, or derived from the model).
    """

    def __init__(self, config: RetargetConfig | None = None, hand_mjcf: str | None = None):
        self.config = config or RetargetConfig()
        self._model = mujoco.MjModel.from_xml_string(hand_mjcf or leap_like_hand.hand_mjcf())
        self._data = mujoco.MjData(self._model)
        m = self._model
        hinge_or_slide = (int(mujoco.mjtJoint.mjJNT_HINGE), int(mujoco.mjtJoint.mjJNT_SLIDE))
        for j in range(m.njnt):
            if int(m.jnt_type[j]) not in hinge_or_slide:
                raise ValueError(f"joint {m.joint(j).name!r} is not a hinge or slide joint")
            if not m.jnt_limited[j]:
                raise ValueError(f"joint {m.joint(j).name!r} has no range")
        self.joint_names: tuple[str, ...] = tuple(m.joint(j).name for j in range(m.njnt))
        self._qadr = m.jnt_qposadr.copy()
        self._dadr = m.jnt_dofadr.copy()
        self.lower: np.ndarray = m.jnt_range[:, 0].copy()
        self.upper: np.ndarray = m.jnt_range[:, 1].copy()
        self._sites = [m.site(f"{f}_tip").id for f in FINGERS]
        self._chains = [_chain_joints(m, m.site_bodyid[sid]) for sid in self._sites]
        self._membership = np.zeros((len(self._sites), m.njnt))  # (4, n): 1 where joint moves tip
        for i, chain in enumerate(self._chains):
            self._membership[i, chain] = 1.0
        self.seed: np.ndarray = (self.lower + self.upper) / 2.0
        """(n,) rad, mid-range: the restart posture of the solver."""

        # The palm is welded to the world in a hand-only model: its pose is constant.
        mujoco.mj_kinematics(m, self._data)
        palm = self._data.body(leap_like_hand.ROOT_BODY)
        self._palm_pos = palm.xpos.copy()
        self._palm_rot = palm.xmat.reshape(3, 3).copy()
        self._wrist = np.asarray(self.config.wrist_in_palm)
        self._R = np.asarray(self.config.operator_to_hand)
        if self.config.scaling is None:
            mf_tip = self.fingertip_vectors(np.zeros(len(self.joint_names)))[FINGERS.index("mf")]
            self.scaling = float(np.linalg.norm(mf_tip) / HUMAN_HAND_LENGTH)
        else:
            self.scaling = float(self.config.scaling)

        self._jac = np.zeros((len(self._sites), 3, m.nv))
        self.reset()

    # --- state ------------------------------------------------------------------------------
    def reset(self, q: np.ndarray | None = None) -> None:
        """Restart the stream from posture q (n,) rad (clipped to the limits; default q = 0)."""
        q0 = np.zeros(len(self.joint_names)) if q is None else self._check_q(q)
        q0 = np.clip(q0, self.lower, self.upper)
        self._q_solution = q0.copy()  # warm start and regularisation target
        self._q_out = q0.copy()  # filter state

    # --- kinematics -------------------------------------------------------------------------
    def fingertip_vectors(self, q: np.ndarray) -> np.ndarray:
        """(4, 3) robot wrist-to-tip vectors in the palm frame, m, order th, if, mf, rf, at q (n,) rad."""
        self._set_q(self._check_q(q))
        mujoco.mj_kinematics(self._model, self._data)
        return self._tips()

    def body_vectors(self, q: np.ndarray, bodies: tuple[str, ...]) -> np.ndarray:
        """(k, 3) robot wrist-to-body-origin vectors in the palm frame, m, at q (n,) rad."""
        self._set_q(self._check_q(q))
        mujoco.mj_kinematics(self._model, self._data)
        xpos = np.stack([self._data.body(b).xpos for b in bodies])
        return (xpos - self._palm_pos) @ self._palm_rot - self._wrist

    # --- retargeting ------------------------------------------------------------------------
    def targets(self, keypoints: np.ndarray) -> np.ndarray:
        """(4, 3) robot-scale target vectors s R (tip - wrist), m, for keypoints (21, 3) m."""
        k = check_keypoints(keypoints)
        return self.scaling * (k[list(HUMAN_TIPS)] - k[0]) @ self._R.T

    def retarget(self, keypoints: np.ndarray) -> np.ndarray:
        """Joint positions (n,) rad, within the limits, for keypoints (21, 3) m in the wrist frame.

        Raises ValueError for keypoints of the wrong shape or with non-finite values (the state
        is then unchanged, so the caller can hold the hand and continue the stream).
        """
        target = self.targets(keypoints)
        q_prev = self._q_solution
        q, cost, err = self._solve(target, q_prev, q_prev.copy())
        if np.any(err > self.config.restart_error):
            # The warm start can sit in a local minimum (a finger stretched straight against a
            # limit); a second solve from mid-range wins per finger if it does better.
            q2, cost2, _ = self._solve(target, q_prev, self.seed.copy())
            for i in np.flatnonzero(cost2 < cost):
                q[self._chains[i]] = q2[self._chains[i]]
        if np.all(np.isfinite(q)):  # a numerical failure keeps the previous solution
            self._q_solution = q
        a = self.config.alpha
        # A convex combination of in-limit postures; the clip only removes rounding.
        self._q_out = np.clip(a * self._q_solution + (1.0 - a) * self._q_out, self.lower, self.upper)
        return self._q_out.copy()

    def _solve(
        self, target: np.ndarray, q_prev: np.ndarray, q: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Projected Levenberg-Marquardt from q (n,) rad towards the (4, 3) m target vectors.

        Returns q (n,) rad, the objective of each finger (4,) and its tip error (4,) m.
        """
        cfg = self.config
        lam, delta = cfg.regularization, cfg.huber_delta
        n = len(q)
        reg = 2.0 * lam * np.eye(n)
        r = self._residual(q, target)
        J = self._jacobian()
        e = self._objective(r, q, q_prev).sum()
        mu = cfg.damping
        for _ in range(cfg.iterations):
            # Huber by reweighting: above delta the quadratic model is scaled down to |r| = delta.
            norms = np.linalg.norm(r, axis=1)
            sw = np.sqrt(np.where(norms <= delta, 1.0, delta / np.maximum(norms, 1e-12)))
            Jw = (J * sw[:, None, None]).reshape(-1, n)
            H = Jw.T @ Jw + reg
            g = Jw.T @ (r * sw[:, None]).ravel() - 2.0 * lam * (q - q_prev)  # minus the gradient
            # Joints on a limit that the descent direction pushes outwards stay put (active set):
            # a projected step that still used them would be cut short for all the others.
            free = ~(((q <= self.lower) & (g < 0)) | ((q >= self.upper) & (g > 0)))
            step = np.zeros(n)
            step[free] = np.linalg.solve(H[np.ix_(free, free)] + mu * np.eye(free.sum()), g[free])
            q_try = np.clip(q + step, self.lower, self.upper)
            r_try = self._residual(q_try, target)
            e_try = self._objective(r_try, q_try, q_prev).sum()
            if e_try < e:
                converged = np.abs(q_try - q).max() < 1e-6
                q, r, e = q_try, r_try, e_try
                if converged:
                    break
                J = self._jacobian()  # the data holds q_try's kinematics
                mu = max(mu * 0.3, 1e-9)
            elif mu > 1e3:  # even tiny steps do not help: a (local) minimum on the limits
                break
            else:
                mu *= 10.0
        return q, self._objective(r, q, q_prev), np.linalg.norm(r, axis=1)

    def _objective(self, r: np.ndarray, q: np.ndarray, q_prev: np.ndarray) -> np.ndarray:
        """Per-finger objective (4,): Huber of the tip error plus the finger's regularisation."""
        d = self.config.huber_delta
        norms = np.linalg.norm(r, axis=1)
        huber = np.where(norms <= d, 0.5 * norms**2, d * (norms - 0.5 * d))
        return huber + self.config.regularization * (self._membership @ (q - q_prev) ** 2)

    def _residual(self, q: np.ndarray, target: np.ndarray) -> np.ndarray:
        """Target minus tip vectors (4, 3) m at q; leaves the data at q's kinematics."""
        self._set_q(q)
        mujoco.mj_kinematics(self._model, self._data)
        return target - self._tips()

    def _jacobian(self) -> np.ndarray:
        """Tip-vector Jacobians (4, 3, n) m/rad in the palm frame at the data's current q."""
        m, d = self._model, self._data
        mujoco.mj_comPos(m, d)  # mj_jacSite needs cdof and subtree_com
        for i, sid in enumerate(self._sites):
            mujoco.mj_jacSite(m, d, self._jac[i], None, sid)
        return self._palm_rot.T @ self._jac[:, :, self._dadr]

    def _tips(self) -> np.ndarray:
        xpos = self._data.site_xpos[self._sites]
        return (xpos - self._palm_pos) @ self._palm_rot - self._wrist

    def _set_q(self, q: np.ndarray) -> None:
        self._data.qpos[self._qadr] = q

    def _check_q(self, q: np.ndarray) -> np.ndarray:
        q = np.asarray(q, dtype=np.float64)
        if q.shape != (len(self.joint_names),):
            raise ValueError(f"q has shape {q.shape}, expected ({len(self.joint_names)},)")
        if not np.all(np.isfinite(q)):
            raise ValueError(f"q is not finite: {q.tolist()}")
        return q


def _chain_joints(model: mujoco.MjModel, body: int) -> np.ndarray:
    """Indices of the joints between the world and ``body`` (the joints that move it)."""
    joints: list[int] = []
    while body > 0:
        adr, num = model.body_jntadr[body], model.body_jntnum[body]
        joints.extend(range(adr, adr + num))
        body = model.body_parentid[body]
    return np.array(sorted(joints), dtype=int)


def check_keypoints(keypoints: np.ndarray) -> np.ndarray:
    """Keypoints as a (21, 3) float64 array; ValueError naming the problem otherwise."""
    k = np.asarray(keypoints, dtype=np.float64)
    if k.shape != (21, 3):
        raise ValueError(f"keypoints has shape {k.shape}, expected (21, 3)")
    bad = np.flatnonzero(~np.all(np.isfinite(k), axis=1))
    if bad.size:
        raise ValueError(f"keypoints are not finite at rows {bad.tolist()}")
    return k


def keypoints_from_robot(q: np.ndarray, retargeter: HandRetargeter) -> np.ndarray:
    """Human-like keypoints (21, 3) m in the wrist frame whose retargeting gives back posture q (n,) rad.

    The inverse of the mapping: every robot point p (palm frame, relative to the virtual wrist)
    becomes R^T p / s. Tips come from the tip sites, the other finger keypoints from the link
    origins of the LEAP-like hand (MCP, PIP, DIP; thumb CMC, MCP, IP); the pinky, which the robot
    lacks, continues the ring finger by the ring-minus-middle offset. For tests and scripted replay.
    """
    R, s = np.asarray(retargeter.config.operator_to_hand), retargeter.scaling
    tips = retargeter.fingertip_vectors(q)
    k = np.zeros((21, 3))
    for i, f in enumerate(FINGERS):
        chain = np.vstack([retargeter.body_vectors(q, _CHAIN_BODIES[f]), tips[i : i + 1]])
        k[list(_HUMAN_CHAINS[f])] = chain @ R / s  # rows p -> R^T p / s
    k[17:21] = 2.0 * k[13:17] - k[9:13]
    return k
