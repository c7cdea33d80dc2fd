"""The peers of ``bench.decode``: one decode step (one new token per row, against a cache holding
``length - 1`` tokens) as torch and onnxruntime users run it today. Each factory returns a zero-argument
step and a function that reads its output as (B, Hq, 1, D) NumPy.

Every contender gets the same shapes: q (B, Hq, 1, D), the new k/v (B, Hkv, 1, D), a cache of
``max_len`` slots per row in (B, Hkv, max_len, D). The static-cache peers write into the *shared*
``cache_k``/``cache_v`` buffers (every contender writes the same values at the same slot, so sharing
is exact and saves gigabytes); the growing-cache peers hold their own (B, Hkv, length - 1, D) past.
"""

from __future__ import annotations

import numpy as np

IR_VERSION = 10  # onnx 1.23 stamps 14, which onnxruntime 1.31 rejects


# ---- torch ----------------------------------------------------------------------------------------

def torch_concat(q, k, v, cache_k, cache_v, length):
    """``torch.cat`` of past and new, then SDPA: every step allocates and fills a new cache."""
    import torch
    import torch.nn.functional as F  # noqa: N812 - torch's convention

    qt, kt, vt = (torch.from_numpy(x) for x in (q, k, v))
    past_k = torch.from_numpy(np.ascontiguousarray(cache_k[:, :, :length - 1]))
    past_v = torch.from_numpy(np.ascontiguousarray(cache_v[:, :, :length - 1]))
    box = {}

    def step():
        with torch.inference_mode():
            kk, vv = torch.cat([past_k, kt], dim=2), torch.cat([past_v, vt], dim=2)
            box["y"] = F.scaled_dot_product_attention(qt, kk, vv, enable_gqa=True)
    return step, lambda: box["y"].numpy()


def torch_static(q, k, v, cache_k, cache_v, length):
    """Hugging Face's static cache: ``index_copy_`` into the fixed buffer, SDPA over all of it with a
    boolean length mask."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    qt, kt, vt = (torch.from_numpy(x) for x in (q, k, v))
    ck, cv = torch.from_numpy(cache_k), torch.from_numpy(cache_v)
    slot = torch.tensor([length - 1])
    mask = (torch.arange(cache_k.shape[2]) < length).view(1, 1, 1, -1)
    box = {}

    def step():
        with torch.inference_mode():
            ck.index_copy_(2, slot, kt)
            cv.index_copy_(2, slot, vt)
            box["y"] = F.scaled_dot_product_attention(qt, ck, cv, attn_mask=mask, enable_gqa=True)
    return step, lambda: box["y"].numpy()


# ---- onnxruntime ----------------------------------------------------------------------------------

def _session(model, threads: int):
    import onnxruntime as ort

    model.ir_version = IR_VERSION
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3  # TensorScatter warns on every copy; the table says whether it copied
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _info(name, shape):
    from onnx import TensorProto, helper

    elem = TensorProto.INT64 if name in ("slot", "nonpad") else TensorProto.FLOAT
    elem = TensorProto.INT32 if name in ("seqlens_k", "total_len") else elem
    return helper.make_tensor_value_info(name, elem, shape)


def _bound(sess, inputs: dict, outputs: dict):
    """An I/O binding: ``inputs`` name -> OrtValue; ``outputs`` name -> OrtValue (shared) or None (ORT allocates)."""
    io = sess.io_binding()
    for name, value in inputs.items():
        io.bind_ortvalue_input(name, value)
    for name, value in outputs.items():
        if value is None:
            io.bind_output(name, "cpu")
        else:
            io.bind_ortvalue_output(name, value)
    return io


def ort_attention23(q, k, v, cache_k, cache_v, length, threads=2):
    """Opset-23 ``Attention`` with past/present: present = concat(past, new), a new buffer per step."""
    import onnxruntime as ort
    from onnx import helper

    b, hq, _, d = q.shape
    hkv = k.shape[1]
    node = helper.make_node("Attention", ["q", "k", "v", "", "past_k", "past_v"], ["y", "present_k", "present_v"])
    graph = helper.make_graph([node], "attention23", [
        _info("q", (b, hq, 1, d)), _info("k", (b, hkv, 1, d)), _info("v", (b, hkv, 1, d)),
        _info("past_k", (b, hkv, "P", d)), _info("past_v", (b, hkv, "P", d))],
        [_info("y", (b, hq, 1, d)), _info("present_k", (b, hkv, "T", d)), _info("present_v", (b, hkv, "T", d))])
    sess = _session(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)]), threads)
    ov = ort.OrtValue.ortvalue_from_numpy
    past = {"past_k": np.ascontiguousarray(cache_k[:, :, :length - 1]),
            "past_v": np.ascontiguousarray(cache_v[:, :, :length - 1])}
    io = _bound(sess, {"q": ov(q), "k": ov(k), "v": ov(v), **{n: ov(a) for n, a in past.items()}},
                {"y": None, "present_k": None, "present_v": None})
    return (lambda: sess.run_with_iobinding(io)), (lambda: io.get_outputs()[0].numpy())


def ort_tensorscatter_attention24(q, k, v, cache_k, cache_v, length, threads=2):
    """Hand-built opset 24: ``TensorScatter`` writes the new entries into the cache (bound as both input
    and output: in place), ``Attention`` reads it with ``nonpad_kv_seqlen``."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    b, hq, _, d = q.shape
    hkv, max_len = k.shape[1], cache_k.shape[2]
    one = helper.make_tensor("one", TensorProto.INT64, [1], [1])
    nodes = [helper.make_node("TensorScatter", ["past_k", "k", "slot"], ["present_k"], axis=2),
             helper.make_node("TensorScatter", ["past_v", "v", "slot"], ["present_v"], axis=2),
             helper.make_node("Add", ["slot", "one"], ["nonpad"]),
             helper.make_node("Attention", ["q", "present_k", "present_v", "", "", "", "nonpad"], ["y"],
                              is_causal=1)]
    cache = (b, hkv, max_len, d)
    graph = helper.make_graph(nodes, "tensorscatter_attention24", [
        _info("q", (b, hq, 1, d)), _info("k", (b, hkv, 1, d)), _info("v", (b, hkv, 1, d)),
        _info("past_k", cache), _info("past_v", cache), _info("slot", (b,))],
        [_info("y", (b, hq, 1, d)), _info("present_k", cache), _info("present_v", cache)], initializer=[one])
    sess = _session(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 24)]), threads)
    ov = ort.OrtValue.ortvalue_from_numpy
    ck, cv = ov(cache_k), ov(cache_v)  # share the NumPy buffers
    y = ov(np.zeros(q.shape, np.float32))
    io = _bound(sess, {"q": ov(q), "k": ov(k), "v": ov(v), "past_k": ck, "past_v": cv,
                       "slot": ov(np.full(b, length - 1, np.int64))},
                {"y": y, "present_k": ck, "present_v": cv})
    return (lambda: sess.run_with_iobinding(io)), (lambda: y.numpy())


def ort_group_query_attention(q, k, v, cache_k, cache_v, length, threads=2):
    """onnxruntime's contrib ``GroupQueryAttention`` with past and present bound to one buffer (its
    ``past_present_share_buffer`` mode): the new token is written in place at ``seqlens_k``. Its q/k/v
    are (B, 1, H*D): the transposes are made once, outside the step (its users hold that layout)."""
    import onnxruntime as ort
    from onnx import helper

    b, hq, _, d = q.shape
    hkv, max_len = k.shape[1], cache_k.shape[2]
    cache = (b, hkv, max_len, d)
    node = helper.make_node("GroupQueryAttention", ["q", "k", "v", "past_k", "past_v", "seqlens_k", "total_len"],
                            ["y", "present_k", "present_v"], domain="com.microsoft", num_heads=hq,
                            kv_num_heads=hkv)
    graph = helper.make_graph([node], "group_query_attention", [
        _info("q", (b, 1, hq * d)), _info("k", (b, 1, hkv * d)), _info("v", (b, 1, hkv * d)),
        _info("past_k", cache), _info("past_v", cache), _info("seqlens_k", (b,)), _info("total_len", ())],
        [_info("y", (b, 1, hq * d)), _info("present_k", cache), _info("present_v", cache)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21),
                                                    helper.make_opsetid("com.microsoft", 1)])
    sess = _session(model, threads)
    ov = ort.OrtValue.ortvalue_from_numpy

    def flat(x):
        return np.ascontiguousarray(x.transpose(0, 2, 1, 3).reshape(b, 1, -1))
    ck, cv = ov(cache_k), ov(cache_v)
    y = ov(np.zeros((b, 1, hq * d), np.float32))
    io = _bound(sess, {"q": ov(flat(q)), "k": ov(flat(k)), "v": ov(flat(v)), "past_k": ck, "past_v": cv,
                       "seqlens_k": ov(np.full(b, length - 1, np.int32)),
                       "total_len": ov(np.array(length, np.int32))},
                {"y": y, "present_k": ck, "present_v": cv})
    return (lambda: sess.run_with_iobinding(io)), (lambda: y.numpy().reshape(b, 1, hq, d).transpose(0, 2, 1, 3))


PEERS = {"torch cat + SDPA": torch_concat,
         "torch static (index_copy_ + SDPA)": torch_static,
         "ORT Attention-23 past/present": ort_attention23,
         "ORT TensorScatter + Attention-24": ort_tensorscatter_attention24,
         "ORT GroupQueryAttention (shared buffer)": ort_group_query_attention}
