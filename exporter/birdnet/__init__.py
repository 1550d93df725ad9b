"""BirdNET V2.4 as an ONNX branch for the device, converted from TFLite without TensorFlow.

Public API:
    convert_birdnet(out_path, tflite_path=None) -> ConversionReport   (exporter.birdnet.convert)
    check_parity(onnx_path, tflite_path, recordings) -> ParityReport  (exporter.birdnet.parity)
    map_to_taxonomy(read_birdnet_labels(), read_taxonomy(csv))        (exporter.birdnet.labels)
    restrict_to_classes(src, dst, indices)                            (exporter.birdnet.restrict)
    quantize_birdnet_int8(fp32, out, windows)                         (exporter.birdnet.quantize)

Submodules are imported lazily by their users: conversion needs the ``tflite`` package, parity
needs ``ai-edge-litert``; neither belongs on the device.
"""
