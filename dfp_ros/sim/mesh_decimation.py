"""Fewer triangles for a MuJoCo model's visual meshes, in memory, for fast software rendering.

Off-screen rendering on a CPU (Mesa llvmpipe) spends most of a small frame on the UR5e/Robotiq visual
meshes (~185k triangles), whatever the image size. Vertex clustering on a grid: every vertex is
snapped to one existing vertex of its grid cell, triangles that collapse are dropped. The cell is a
fixed fraction of each mesh's size, so small parts seen up close (the gripper, by a wrist camera)
keep proportionally as much detail as the long arm links seen from afar.

Only `mesh_face` (and the per-corner `mesh_facenormal` / `mesh_facetexcoord` that run parallel to
it) and `mesh_facenum` change; the kept triangles move to the front of each mesh's block. Vertices,
normals, the convex hulls (`mesh_graph`, `mesh_poly*`) and inertias stay as compiled, and those are
what collision detection reads: physics is unchanged, also for the gripper meshes that serve a
visual and a collision geom at once. The GL context uploads `mesh_facenum` triangles per mesh, so
decimate before it is made. Ray casting against a decimated mesh (mj_ray, rangefinders, mouse
picking) would still walk the mesh's bounding-volume tree over the old triangle ids, so this is for
models that do not cast rays at these meshes.
"""

from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numpy as np

# Cells per mesh size (largest bounding-box side). 32 takes the UR5e + Robotiq from ~185k to ~27k
# triangles; 96-pixel front and wrist views then differ from the original in <1% of their pixels
# (docs/camera_views.png). 48 (~42k) looks the same and renders ~1.5 ms slower.
DEFAULT_CELLS_PER_MESH = 32


@dataclass(frozen=True)
class DecimationResult:
    """Triangle counts of the decimated meshes before and after."""

    meshes: int
    faces_before: int
    faces_after: int


def cluster_faces(vertices: np.ndarray, faces: np.ndarray, cell: float) -> tuple[np.ndarray, np.ndarray]:
    """Vertex clustering: (new faces int32 [k, 3], index [k] of the source face each came from).

    Each vertex is replaced by the vertex of its `cell`-sized grid cell nearest to the cell's mean
    (an existing vertex, so vertex data need not change); faces that lose a corner that way are
    dropped, as are repeats of a face with the same winding (both sides of a thin wall stay).
    """
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    if vertices.ndim != 2 or vertices.shape[1] != 3 or faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"expected vertices [n, 3] and faces [m, 3], got {vertices.shape} and {faces.shape}")
    if not cell > 0:
        raise ValueError(f"cell must be > 0, got {cell}")
    if faces.size and (faces.min() < 0 or faces.max() >= len(vertices)):
        raise ValueError(f"faces index vertices outside 0..{len(vertices) - 1}")
    if not faces.size:
        return np.zeros((0, 3), np.int32), np.zeros(0, np.int64)
    grid = np.floor((vertices - vertices.min(axis=0)) / cell).astype(np.int64)
    span = grid.max(axis=0) + 1
    # One integer per cell: a 1-D unique is far quicker than np.unique(axis=0).
    _, cluster, counts = np.unique((grid[:, 0] * span[1] + grid[:, 1]) * span[2] + grid[:, 2],
                                   return_inverse=True, return_counts=True)
    mean = np.zeros((counts.size, 3))
    np.add.at(mean, cluster, vertices)
    mean /= counts[:, None]
    dist = np.linalg.norm(vertices - mean[cluster], axis=1)
    by_cluster = np.lexsort((dist, cluster))  # per cluster, nearest to its mean first
    first = np.r_[True, cluster[by_cluster][1:] != cluster[by_cluster][:-1]]
    representative = np.empty(counts.size, np.int64)
    representative[cluster[by_cluster][first]] = by_cluster[first]

    snapped = representative[cluster[faces]]
    alive = np.flatnonzero((snapped[:, 0] != snapped[:, 1]) & (snapped[:, 1] != snapped[:, 2])
                           & (snapped[:, 0] != snapped[:, 2]))
    tri = snapped[alive]
    # Rotate each triangle to start at its smallest index: equal keys = same triangle, same winding.
    shift = np.argmin(tri, axis=1)
    rows = np.arange(len(tri))[:, None]
    a, b, c = tri[rows, (shift[:, None] + np.arange(3)) % 3].T
    n = len(vertices)
    if n < 2_000_000:  # n**3 fits an int64
        _, unique_at = np.unique((a * n + b) * n + c, return_index=True)
    else:
        _, unique_at = np.unique(np.stack([a, b, c], axis=1), axis=0, return_index=True)
    kept = alive[np.sort(unique_at)]
    return snapped[kept].astype(np.int32), kept


def visual_mesh_ids(model: mujoco.MjModel) -> list[int]:
    """Meshes drawn by at least one visual-only geom (contype = conaffinity = 0)."""
    is_mesh = model.geom_type == mujoco.mjtGeom.mjGEOM_MESH
    visual = (model.geom_contype == 0) & (model.geom_conaffinity == 0)
    return sorted({int(i) for i in model.geom_dataid[is_mesh & visual]})


def decimate_visual_meshes(model: mujoco.MjModel, cells_per_mesh: int = DEFAULT_CELLS_PER_MESH) -> DecimationResult:
    """Decimate, in place, every mesh a visual geom draws (see the module docstring for what changes)."""
    if cells_per_mesh < 1:
        raise ValueError(f"cells_per_mesh must be >= 1, got {cells_per_mesh}")
    per_corner = [a for a in (model.mesh_facenormal, model.mesh_facetexcoord) if len(a) == model.nmeshface]
    ids = visual_mesh_ids(model)
    before = after = 0
    for i in ids:
        vert0, nvert = int(model.mesh_vertadr[i]), int(model.mesh_vertnum[i])
        face0, nface = int(model.mesh_faceadr[i]), int(model.mesh_facenum[i])
        vertices = model.mesh_vert[vert0:vert0 + nvert]
        size = float(np.ptp(vertices, axis=0).max()) if nvert else 0.0
        before += nface
        if size <= 0 or nface == 0:
            after += nface
            continue
        faces, source = cluster_faces(vertices, model.mesh_face[face0:face0 + nface], size / cells_per_mesh)
        for corner in per_corner:
            corner[face0:face0 + len(faces)] = corner[face0 + source]
        model.mesh_face[face0:face0 + len(faces)] = faces
        model.mesh_facenum[i] = len(faces)
        after += len(faces)
    return DecimationResult(meshes=len(ids), faces_before=before, faces_after=after)
