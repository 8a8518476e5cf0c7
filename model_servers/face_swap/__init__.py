"""The face-swap model server (InsightFace + inswapper ONNX, or the offline ``lite`` engine).

Kept import-light: the consumer imports ``model_servers.face_swap.protocol`` without ONNX/OpenCV.
"""
