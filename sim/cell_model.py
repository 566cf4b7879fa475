"""Queries of a compiled cell model (``sim.cell.build_cell``): segmentation labels per geom, the
tweezer's joint addresses, and the welded tool's placement."""

from __future__ import annotations

import mujoco
import numpy as np

from dexhier.vocabulary import SEG_LABELS, TOOL_JOINTS
from sim import tool as tool_mod
from sim.cell import OBJECT_BODY


def segmentation_table(model: mujoco.MjModel) -> np.ndarray:
    """Label (``SEG_LABELS``) of every geom id, for segmentation renders: int8 (ngeom,)."""
    labels = np.full(model.ngeom, SEG_LABELS["robot"], dtype=np.int8)
    tool_bodies = {model.body(b).id for b in (tool_mod.BASE_BODY, *tool_mod.ARM_BODIES)}
    obj_body = model.body(OBJECT_BODY).id
    bin_body = model.body("bin").id
    for g in range(model.ngeom):
        b = model.geom_bodyid[g]
        if b == obj_body:
            labels[g] = SEG_LABELS["object"]
        elif b in tool_bodies:
            labels[g] = SEG_LABELS["tool"]
        elif b == bin_body:
            labels[g] = SEG_LABELS["bin"]
        elif b == 0:
            labels[g] = SEG_LABELS["table"]
    return labels


def set_tool_at_weld(model: mujoco.MjModel, data: mujoco.MjData) -> None:
    """Put the free tool's qpos where the ``tool_weld`` equality holds it (from the mount body's
    current pose; call after kinematics). The caller recomputes kinematics or forward dynamics."""
    weld = model.equality("tool_weld").id
    mount = int(model.eq_obj1id[weld])
    rel = model.eq_data[weld, 3:10]
    pos, quat = np.zeros(3), np.zeros(4)
    mujoco.mju_mulPose(pos, quat, data.xpos[mount], data.xquat[mount], rel[:3], rel[3:])
    a = model.jnt_qposadr[model.joint("tweezer_free").id]
    data.qpos[a : a + 3], data.qpos[a + 3 : a + 7] = pos, quat


def tool_joint_addresses(model: mujoco.MjModel) -> tuple[np.ndarray, np.ndarray]:
    """qpos and dof addresses of the tweezer hinges, each int (2,)."""
    jids = [model.joint(j).id for j in TOOL_JOINTS]
    return np.array([model.jnt_qposadr[j] for j in jids]), np.array([model.jnt_dofadr[j] for j in jids])
