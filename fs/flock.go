package fs

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// unsafeFlock converts between x/sys and syscall's identical Flock_t.
func unsafeFlock(f *unix.Flock_t) unsafe.Pointer { return unsafe.Pointer(f) }

func unsafePtr(p *byte) unsafe.Pointer { return unsafe.Pointer(p) }
