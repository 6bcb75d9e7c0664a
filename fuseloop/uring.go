package fuseloop

import (
	"errors"
	"fmt"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// This file is a minimal io_uring: one instance with 128-byte submission
// entries (SQE128, which IORING_OP_URING_CMD needs for its 80-byte command
// area), mapped into memory outside the Go heap. The layouts follow
// include/uapi/linux/io_uring.h.

const (
	setupCQSize = 1 << 3  // IORING_SETUP_CQSIZE
	setupSQE128 = 1 << 10 // IORING_SETUP_SQE128

	featSingleMmap = 1 << 0 // IORING_FEAT_SINGLE_MMAP

	enterGetEvents = 1 << 0 // IORING_ENTER_GETEVENTS

	offSQRing = 0
	offCQRing = 0x8000000
	offSQEs   = 0x10000000

	uringOpRead = 22 // IORING_OP_READ
	uringOpCmd  = 46 // IORING_OP_URING_CMD

	sqeSize = 128 // with SQE128
	cqeSize = 16
)

// uringParams is struct io_uring_params.
type uringParams struct {
	sqEntries, cqEntries, flags, sqThreadCPU, sqThreadIdle, features, wqFD uint32
	resv                                                                   [3]uint32
	sqOff                                                                  struct {
		head, tail, ringMask, ringEntries, flags, dropped, array, resv1 uint32
		userAddr                                                        uint64
	}
	cqOff struct {
		head, tail, ringMask, ringEntries, overflow, cqes, flags, resv1 uint32
		userAddr                                                        uint64
	}
}

// sqe is the part of struct io_uring_sqe this package fills in. cmd is
// the URING_CMD command area (addr3 onwards, 80 bytes with SQE128).
type sqe struct {
	opcode      uint8
	flags       uint8
	ioprio      uint16
	fd          int32
	off         uint64 // file offset; for URING_CMD, cmd_op in the low half
	addr        uint64
	len         uint32
	opFlags     uint32
	userData    uint64
	bufIndex    uint16
	personality uint16
	spliceFdIn  int32
	cmd         [80]byte
}

// cqe is struct io_uring_cqe.
type cqe struct {
	userData uint64
	res      int32
	flags    uint32
}

// uring is one io_uring instance. Submissions (sqe, then submit or
// enter) must be serialised by the caller; completions are consumed by one
// goroutine at a time.
type uring struct {
	fd int

	ringMem []byte
	sqeMem  []byte

	sqHead, sqTail *uint32
	sqMask         uint32
	sqEntries      uint32

	cqHead, cqTail *uint32
	cqMask         uint32
	cqes           unsafe.Pointer
}

func init() {
	if unsafe.Sizeof(uringParams{}) != 120 || unsafe.Sizeof(sqe{}) != sqeSize || unsafe.Sizeof(cqe{}) != cqeSize {
		panic("fuseloop: io_uring struct sizes do not match the kernel's")
	}
}

// newUring sets up an io_uring with sqEntries submission and cqEntries
// completion slots.
func newUring(sqEntries, cqEntries uint32) (*uring, error) {
	p := uringParams{flags: setupSQE128 | setupCQSize, cqEntries: cqEntries}
	fd, _, errno := unix.Syscall(unix.SYS_IO_URING_SETUP, uintptr(sqEntries), uintptr(unsafe.Pointer(&p)), 0)
	if errno != 0 {
		return nil, fmt.Errorf("io_uring_setup: %w", errno)
	}
	u := &uring{fd: int(fd)}
	if err := u.mapRings(&p); err != nil {
		u.close()
		return nil, err
	}
	return u, nil
}

func (u *uring) mapRings(p *uringParams) error {
	if p.features&featSingleMmap == 0 {
		return errors.New("io_uring: kernel lacks IORING_FEAT_SINGLE_MMAP")
	}
	size := max(p.sqOff.array+p.sqEntries*4, p.cqOff.cqes+p.cqEntries*cqeSize)
	mem, err := unix.Mmap(u.fd, offSQRing, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return fmt.Errorf("io_uring: map rings: %w", err)
	}
	u.ringMem = mem
	sqes, err := unix.Mmap(u.fd, offSQEs, int(p.sqEntries*sqeSize), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return fmt.Errorf("io_uring: map submission entries: %w", err)
	}
	u.sqeMem = sqes
	at := func(off uint32) *uint32 { return (*uint32)(unsafe.Pointer(&mem[off])) }
	u.sqHead, u.sqTail = at(p.sqOff.head), at(p.sqOff.tail)
	u.sqMask, u.sqEntries = *at(p.sqOff.ringMask), *at(p.sqOff.ringEntries)
	u.cqHead, u.cqTail = at(p.cqOff.head), at(p.cqOff.tail)
	u.cqMask = *at(p.cqOff.ringMask)
	u.cqes = unsafe.Pointer(&mem[p.cqOff.cqes])
	// Submission slot i is always array entry i.
	array := unsafe.Slice(at(p.sqOff.array), p.sqEntries)
	for i := range array {
		array[i] = uint32(i)
	}
	return nil
}

func (u *uring) close() {
	if u.sqeMem != nil {
		unix.Munmap(u.sqeMem)
	}
	if u.ringMem != nil {
		unix.Munmap(u.ringMem)
	}
	unix.Close(u.fd)
}

// nextSQE returns a zeroed submission slot, or nil when the ring is full
// (submit first). The slot is handed to the kernel by push.
func (u *uring) nextSQE() *sqe {
	tail := *u.sqTail // only submitters write the tail, and they are serialised
	if tail-atomic.LoadUint32(u.sqHead) >= u.sqEntries {
		return nil
	}
	s := (*sqe)(unsafe.Pointer(&u.sqeMem[(tail&u.sqMask)*sqeSize]))
	*s = sqe{}
	return s
}

// push publishes the slot nextSQE returned.
func (u *uring) push() { atomic.StoreUint32(u.sqTail, *u.sqTail+1) }

// unsubmitted counts published slots the kernel has not consumed yet.
func (u *uring) unsubmitted() uint32 {
	return atomic.LoadUint32(u.sqTail) - atomic.LoadUint32(u.sqHead)
}

// enter submits published slots and, with wait, blocks until at least one
// completion is ready. EINTR is not an error: the caller looks again.
func (u *uring) enter(submit uint32, wait bool) error {
	var minComplete, flags uintptr
	if wait {
		minComplete, flags = 1, enterGetEvents
	}
	_, _, errno := unix.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(u.fd), uintptr(submit), minComplete, flags, 0, 0)
	if errno != 0 && errno != unix.EINTR {
		return fmt.Errorf("io_uring_enter: %w", errno)
	}
	return nil
}

// peek returns the oldest completion without consuming it.
func (u *uring) peek() (cqe, bool) {
	head := *u.cqHead // only the consumer writes the head
	if head == atomic.LoadUint32(u.cqTail) {
		return cqe{}, false
	}
	return *(*cqe)(unsafe.Add(u.cqes, uintptr(head&u.cqMask)*cqeSize)), true
}

// pop consumes the completion peek returned.
func (u *uring) pop() { atomic.StoreUint32(u.cqHead, *u.cqHead+1) }
