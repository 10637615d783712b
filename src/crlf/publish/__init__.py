"""Publishing a trained encoder: its weights and arrays (:mod:`.export`), ONNX / TorchScript files
(:mod:`.formats`), the Hugging Face Hub (:mod:`.hub`) and the run's model card (:mod:`.model_card`)."""
