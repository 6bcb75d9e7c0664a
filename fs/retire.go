package fs

import (
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Backing files of removed objects are let go of shortly after the
// removal, in batches, rather than in the request that removed them.
//
// A backing registration kept for the next open (keepBacking) holds the
// upper file's last reference once its last name is unlinked. Closing it
// is where the kernel frees that inode and its data: in rm -rf of 10,000
// small files on tmpfs layers, about a third of each UNLINK's time in the
// daemon, spent while the process that asked waits. Retired, the ids are
// closed together a few milliseconds later, by a goroutine the
// scheduler is free to run on an idle CPU.
//
// What the user can see of the delay is the removed file's space and
// inode number, which come free up to retireDelay later, within bounds:
//   - a file of more than retireNowBytes is let go of at once, so
//     removing a big file frees its space before the unlink returns, as
//     it does on overlayfs;
//   - STATFS lets go of every pending one first, so df counts no
//     removed file;
//   - at most maxRetired files and maxRetiredBytes of space wait; the
//     removal that would exceed either lets go of them all itself.
//
// So a program that removes small files and at once writes into the
// space they held on a full disk may find it still taken for those few
// milliseconds, as it would had another process held the files open, and
// the upper filesystem gives their inode numbers out again only after.
const (
	retireDelay     = 5 * time.Millisecond
	retireNowBytes  = 1 << 20
	maxRetired      = 4096
	maxRetiredBytes = 16 << 20
)

// backingRetirer holds backing registrations waiting to be let go of.
type backingRetirer struct {
	mu      sync.Mutex
	pending []backingRegistration
	bytes   int64 // space the pending files hold
	armed   bool  // a flush is scheduled
}

// backingRegistration is a backing id and the descriptor registered
// under it.
type backingRegistration struct {
	id int32
	fd int
}

// retireBacking lets go of registration b of an object whose last name
// went, now or soon (see above); st is the object's last stat.
func (u *union) retireBacking(b backingRegistration, st *unix.Stat_t) {
	size := st.Blocks * 512
	if size > retireNowBytes {
		u.unregisterBacking(b)
		return
	}
	r := &u.retired
	r.mu.Lock()
	r.pending = append(r.pending, b)
	r.bytes += size
	full := len(r.pending) >= maxRetired || r.bytes > maxRetiredBytes
	arm := !r.armed && !full
	if arm {
		r.armed = true
	}
	r.mu.Unlock()
	switch {
	case full:
		u.flushRetired()
	case arm:
		time.AfterFunc(retireDelay, func() {
			u.retired.mu.Lock()
			u.retired.armed = false
			u.retired.mu.Unlock()
			u.flushRetired()
		})
	}
}

// flushRetired lets go of every retired backing registration now.
func (u *union) flushRetired() {
	r := &u.retired
	r.mu.Lock()
	pending := r.pending
	r.pending, r.bytes = nil, 0
	r.mu.Unlock()
	for _, b := range pending {
		u.unregisterBacking(b)
	}
}

// unregisterBacking gives registration b back to the kernel and closes
// its descriptor. (Once the connection is gone the kernel has dropped
// every registration itself.)
func (u *union) unregisterBacking(b backingRegistration) {
	if srv := u.srv.Load(); srv != nil {
		srv.UnregisterBackingFd(b.id)
	}
	unix.Close(b.fd)
}
