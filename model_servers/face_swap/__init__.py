"""The face-swap model server (InsightFace + inswapper ONNX, or the offline ``lite`` engine).

Kept import-light: ``python -m model_servers.face_swap`` reads its settings before loading ONNX/OpenCV.
The wire format it shares with the consumer is ``taskfleet.workflows.face_swap_wire``.
"""
