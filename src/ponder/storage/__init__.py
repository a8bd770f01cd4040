"""Where state outlives a process: local paths and s3:// behind one interface (`backends`), and atomic checkpoints on
top of it (`checkpoints`). A component: the learner writes checkpoints from its own node, the driver reads them."""
