package fs

import (
	"sync"

	"golang.org/x/sys/unix"
)

// Directory descriptors.
//
// Every operation that touches the upper layer needs a descriptor of an
// upper directory, and resolving its path from the upper root with openat2
// walks every component again. A directory node therefore keeps one
// descriptor of its upper directory while the kernel holds the node. It
// lends that descriptor, under its leaf lock, to code that only makes
// system calls on it (cachedDirFd.with: a lookup, open, stat, setattr or
// xattr call on a child), and hands out duplicates to the rest. A descriptor follows its directory through renames,
// so it never goes stale the way a path would; a removed directory's node
// is detached and no longer asked. The number kept is bounded (maxDirFds,
// less under a low descriptor limit: descriptorBudget)
// so a walk over a huge tree cannot exhaust the process's descriptors.

// maxDirFds bounds the cached directory descriptors of one mount; a low
// descriptor limit lowers it (descriptorBudget).
const maxDirFds = 4096

// descriptorBudget splits the process's descriptor limit among what a
// mount keeps open to save system calls: cached directory descriptors
// (here, and the lower ones of merged listings, dirlist.go) get at most a
// quarter of it, and idle passthrough registrations (file.go) at most
// half of what that leaves. The rest, three eighths of the limit at
// least, is for the handles the kernel opens (a passthrough handle costs
// two: its own descriptor and its registration's) and for what a request
// opens while it runs. Under a generous limit both caches are at their
// caps; under a hard limit of 1,024, a fixed cache of 4,096 directory
// descriptors filled up in one ls -lR, and every open and create in the
// view then failed with EMFILE until the kernel forgot nodes.
func descriptorBudget(limit int64) (dirFds, idleBackings int64) {
	dirFds = min(maxDirFds, limit/4)
	return dirFds, max(0, min(maxIdleBackings, (limit-dirFds)/2))
}

// reserveDirFd takes a place in the mount's budget of cached directory
// descriptors, if one is left; releaseDirFd gives one back.
func (u *union) reserveDirFd() bool {
	if u.dirFds.Add(1) > u.maxDirFds {
		u.dirFds.Add(-1)
		return false
	}
	return true
}

func (u *union) releaseDirFd() { u.dirFds.Add(-1) }

// openFileLimit is the process's current limit on open descriptors.
func openFileLimit() int64 {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return 0
	}
	return int64(min(lim.Cur, 1<<40))
}

// cachedDirFd is one directory node's cached descriptor. Its mutex is a
// leaf lock. A nil cache (the node is not a directory) holds nothing and
// keeps nothing.
type cachedDirFd struct {
	mu sync.Mutex
	fd int // 0: none (descriptor 0 is never a directory we opened)
}

// dup returns a duplicate of the cached descriptor.
func (c *cachedDirFd) dup() (int, bool) {
	if c == nil {
		return -1, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fd <= 0 {
		return -1, false
	}
	fd, err := unix.FcntlInt(uintptr(c.fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return -1, false
	}
	return fd, true
}

// with calls fn with the cached descriptor itself, saving the dup and the
// close, and reports whether there was one. fn runs under the leaf lock
// (so the descriptor cannot be dropped meanwhile) and must only make
// system calls on it.
func (c *cachedDirFd) with(fn func(fd int)) bool {
	if c == nil {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fd <= 0 {
		return false
	}
	fn(c.fd)
	return true
}

// keep caches a duplicate of fd, if there is room.
func (c *cachedDirFd) keep(u *union, fd int) {
	if c == nil {
		return
	}
	if !u.reserveDirFd() {
		return
	}
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		u.releaseDirFd()
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fd > 0 {
		unix.Close(dup)
		u.releaseDirFd()
		return
	}
	c.fd = dup
}

// drop closes the cached descriptor.
func (c *cachedDirFd) drop(u *union) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fd > 0 {
		unix.Close(c.fd)
		c.fd = 0
		u.releaseDirFd()
	}
}
