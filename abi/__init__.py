"""The bottom layer: numbers fixed by the kernel headers and the specs, the guest
layout, guest memory and the errors every layer raises. It imports nothing of vmboot."""
