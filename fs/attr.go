package fs

import (
	"context"
	"fmt"
	"slices"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// Setattr changes mode, owner, size and times. A lower object is copied up
// first: metadata only, unless the size changes to something other than 0.
func (n *node) Setattr(ctx context.Context, f *file, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if c := n.current(); c != n {
		return c.Setattr(ctx, f, in, out)
	}
	if err := n.setattr(f, in); err != nil {
		return toErrno(err)
	}
	if errno := n.Getattr(ctx, f, out); errno != 0 {
		return errno
	}
	// The attributes just read tell whether there is a set-id bit to
	// drop: most files have none, and cost no second stat.
	if in.Valid&fuse.FATTR_KILL_SUIDGID != 0 && out.Attr.Mode&(unix.S_ISUID|unix.S_ISGID) != 0 {
		if err := n.killSetID(ctx); err != nil {
			return toErrno(err)
		}
		return n.Getattr(ctx, f, out)
	}
	return 0
}

// killSetID drops set-id bits after a chown or truncate by a caller
// without CAP_FSETID (the kernel says so with FATTR_KILL_SUIDGID under
// HANDLE_KILLPRIV_V2): setuid always, setgid when group-executable or the
// caller is not in the file's group, as a local filesystem does.
func (n *node) killSetID(ctx context.Context) error {
	return n.withObject(upperObject, func(dirfd int, name string) error {
		var st unix.Stat_t
		if err := unix.Fstatat(dirfd, name, &st, atFlags(name)); err != nil {
			return err
		}
		mode := st.Mode &^ unix.S_ISUID
		if st.Mode&unix.S_ISGID != 0 {
			c, ok := ctx.(*fuse.Context)
			if st.Mode&unix.S_IXGRP != 0 || !ok || !callerInGroup(c, st.Gid) {
				mode &^= unix.S_ISGID
			}
		}
		if mode == st.Mode {
			return nil
		}
		return fchmodat2(dirfd, name, mode&0o7777, atFlags(name))
	})
}

func (n *node) setattr(f *file, in *fuse.SetAttrIn) error {
	if mode, ok := in.GetMode(); ok && mode&(unix.S_ISUID|unix.S_ISGID) != 0 {
		n.privilegesMayChange()
	}
	size, hasSize := in.GetSize()
	if in.Valid&(fuse.FATTR_UID|fuse.FATTR_GID|fuse.FATTR_SIZE) != 0 {
		n.mu.Lock()
		n.xattrs.forget() // chown and truncate may drop security.capability
		n.mu.Unlock()
	}
	if f != nil && f.upper {
		fd, err := f.descriptor()
		if err != nil {
			return err
		}
		return n.setattrFd(fd, in)
	}
	if err := n.copyUp(ctx0, hasSize && size != 0); err != nil {
		return err
	}
	return n.withObject(upperObject, func(dirfd int, name string) error {
		if hasSize {
			if err := n.truncateLocked(dirfd, name, int64(size)); err != nil {
				return err
			}
		}
		return n.setattrAt(dirfd, name, in)
	})
}

// truncateLocked sets the size of the upper object dirfd/name; truncating
// a metacopy to 0 leaves nothing to copy, so it stops being one. Caller
// holds n.mu.
func (n *node) truncateLocked(dirfd int, name string, size int64) error {
	fd, err := unix.Openat(dirfd, name, unix.O_WRONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open for truncate: %w", err)
	}
	defer unix.Close(fd)
	if size == 0 && n.metacopy {
		removexattrAt(fd, "", n.u.overlayNS+"metacopy")
		removexattrAt(fd, "", n.u.overlayNS+"redirect")
		n.metacopy, n.hasLower = false, false
	}
	if err := unix.Ftruncate(fd, size); err != nil {
		return fmt.Errorf("truncate: %w", err)
	}
	return nil
}

// setattrAt applies owner, mode and times to dirfd/name (name "" is dirfd).
func (n *node) setattrAt(dirfd int, name string, in *fuse.SetAttrIn) error {
	flags := atFlags(name)
	uid, hasUID := in.GetUID()
	gid, hasGID := in.GetGID()
	if hasUID || hasGID {
		u, g := -1, -1
		if hasUID {
			u = int(uid)
		}
		if hasGID {
			g = int(gid)
		}
		if err := unix.Fchownat(dirfd, name, u, g, flags); err != nil {
			return fmt.Errorf("chown: %w", err)
		}
	}
	if mode, ok := in.GetMode(); ok {
		if err := fchmodat2(dirfd, name, mode&0o7777, flags); err != nil {
			return fmt.Errorf("chmod: %w", err)
		}
	}
	if ts, ok := setattrTimes(in); ok {
		if err := unix.UtimesNanoAt(dirfd, name, ts, flags); err != nil {
			return fmt.Errorf("utimes: %w", err)
		}
	}
	return nil
}

func (n *node) setattrFd(fd int, in *fuse.SetAttrIn) error {
	if size, ok := in.GetSize(); ok {
		if err := unix.Ftruncate(fd, int64(size)); err != nil {
			return fmt.Errorf("truncate: %w", err)
		}
	}
	return n.setattrAt(fd, "", in)
}

// fchmodat2 changes a mode without following a symlink, through the
// fchmodat2 system call (Linux 6.6), which also takes AT_EMPTY_PATH.
func fchmodat2(dirfd int, name string, mode uint32, flags int) error {
	p, err := unix.BytePtrFromString(name)
	if err != nil {
		return err
	}
	_, _, e := unix.Syscall6(unix.SYS_FCHMODAT2, uintptr(dirfd), uintptr(unsafePtr(p)), uintptr(mode), uintptr(flags), 0, 0)
	if e == unix.ENOSYS {
		if name == "" {
			return unix.Fchmod(dirfd, mode)
		}
		return unix.Fchmodat(dirfd, name, mode, 0)
	}
	return errnoErr(e)
}

// setattrTimes turns the SETATTR time fields into utimensat's arguments.
func setattrTimes(in *fuse.SetAttrIn) ([]unix.Timespec, bool) {
	omit := unix.Timespec{Nsec: unix.UTIME_OMIT}
	ts := []unix.Timespec{omit, omit}
	any := false
	if in.Valid&fuse.FATTR_ATIME != 0 {
		any = true
		if in.Valid&fuse.FATTR_ATIME_NOW != 0 {
			ts[0] = unix.Timespec{Nsec: unix.UTIME_NOW}
		} else {
			ts[0] = unix.Timespec{Sec: int64(in.Atime), Nsec: int64(in.Atimensec)}
		}
	}
	if in.Valid&fuse.FATTR_MTIME != 0 {
		any = true
		if in.Valid&fuse.FATTR_MTIME_NOW != 0 {
			ts[1] = unix.Timespec{Nsec: unix.UTIME_NOW}
		} else {
			ts[1] = unix.Timespec{Sec: int64(in.Mtime), Nsec: int64(in.Mtimensec)}
		}
	}
	return ts, any
}

// xattrNames caches the xattr names of a node's object, so the common
// question "has this file security.selinux?" costs no system call. Every
// change of xattrs through this mount forgets the list, and so does an open
// for writing (a write may strip security.capability). Guarded by node.mu.
type xattrNames struct {
	// list is nil while the names are not known. Most objects have none
	// (they share noXattrs) or one: a slice, not a map, behind a pointer
	// so an object whose names were never asked for pays one word.
	list *[]string
}

// noXattrs is the list of an object known to have no xattr. Shared: never
// written through.
var noXattrs = []string{}

// knownXattrNames is a cache that knows the object's names.
func knownXattrNames(names []string) xattrNames {
	if len(names) == 0 {
		return xattrNames{list: &noXattrs}
	}
	return xattrNames{list: &names}
}

func (x *xattrNames) forget() { x.list = nil }

// known reports whether the names are cached.
func (x *xattrNames) known() bool { return x.list != nil }

// lists reports whether the cached names are known and hold attr.
func (x *xattrNames) lists(attr string) bool {
	return x.list != nil && slices.Contains(*x.list, attr)
}

// has reports whether attr may exist; on any doubt it says yes and the
// caller asks the filesystem.
func (x *xattrNames) has(dirfd int, name, attr string) bool {
	if x.list == nil {
		names, err := listXattrNames(dirfd, name)
		if err != nil {
			return true
		}
		*x = knownXattrNames(names)
	}
	return x.lists(attr)
}

// mayHave reports whether attr may exist: the list is unknown or holds it.
func (x *xattrNames) mayHave(attr string) bool {
	return x.list == nil || slices.Contains(*x.list, attr)
}

// xattrKnownAbsent reports whether the cached name list says the object
// has no xattr attr: the answer to ls -l's per-file security.selinux
// question without opening anything.
func (n *node) xattrKnownAbsent(attr string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return !n.xattrs.mayHave(attr)
}

// learnXattrNames fills the xattr name cache of a node just made at
// dirfd/name: the kernel asks a new file for security.capability on its
// first writes (an unpacking tar, twice per file), and the list answers
// that without a system call.
func (n *node) learnXattrNames(dirfd int, name string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.xattrs.known() {
		return
	}
	if names, err := listXattrNames(dirfd, name); err == nil {
		n.xattrs = knownXattrNames(names)
	}
}

// objectAt opens the directory holding the node's current backing object
// and returns it with the entry name. Caller holds u.treeMu shared and n.mu.
func (n *node) objectAt() (int, string, error) {
	if n.inUpper {
		return n.openObject()
	}
	if n.parent == nil {
		fd, err := unix.Dup(n.u.lowers[0].rootFd)
		return fd, "", err
	}
	dir, base := splitRel(n.lowerRel())
	fd, err := n.u.lowers[n.lower.layer].openDir(dir)
	return fd, base, err
}

// Which object withObject opens: the current one (upper or lower), or the
// upper one (the caller has copied the node up).
const (
	currentObject = false
	upperObject   = true
)

// withObject runs fn on the directory holding the node's backing object and
// the object's name there ("" when the descriptor is the object itself),
// holding u.treeMu shared and n.mu.
func (n *node) withObject(upper bool, fn func(dirfd int, name string) error) error {
	n.u.treeMu.RLock()
	defer n.u.treeMu.RUnlock()
	n.mu.Lock()
	defer n.mu.Unlock()
	if upper || n.inUpper {
		if done, err := n.withCachedUpperParent(fn); done {
			return err
		}
	}
	open := n.objectAt
	if upper {
		open = n.openObject
	}
	dirfd, name, err := open()
	if err != nil {
		return err
	}
	defer unix.Close(dirfd)
	return fn(dirfd, name)
}

// atFlags are the *at flags that act on dirfd/name without following a
// symlink, or on dirfd itself when name is "".
func atFlags(name string) int {
	if name == "" {
		return unix.AT_SYMLINK_NOFOLLOW | unix.AT_EMPTY_PATH
	}
	return unix.AT_SYMLINK_NOFOLLOW
}

func (n *node) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	if c := n.current(); c != n {
		return c.Getxattr(ctx, attr, dest)
	}
	if isPrivateXattr(attr) || n.xattrKnownAbsent(attr) {
		return 0, syscall.ENODATA
	}
	var sz int
	err := n.withObject(currentObject, func(dirfd int, name string) error {
		if !n.xattrs.has(dirfd, name, attr) {
			// ls -l asks every file for security.selinux and ACLs;
			// most have neither, and the cached name list says so.
			return unix.ENODATA
		}
		var err error
		sz, err = getxattrAt(dirfd, name, attr, dest)
		return err
	})
	return uint32(sz), toErrno(err)
}

func (n *node) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	if c := n.current(); c != n {
		return c.Listxattr(ctx, dest)
	}
	var names []string
	err := n.withObject(currentObject, func(dirfd int, name string) error {
		var err error
		names, err = listXattrNames(dirfd, name)
		return err
	})
	if err != nil {
		return 0, toErrno(err)
	}
	var buf []byte
	for _, nm := range names {
		if !isPrivateXattr(nm) {
			buf = append(append(buf, nm...), 0)
		}
	}
	if len(dest) == 0 {
		return uint32(len(buf)), 0
	}
	if len(dest) < len(buf) {
		return uint32(len(buf)), syscall.ERANGE
	}
	return uint32(copy(dest, buf)), 0
}

// Setxattr and Removexattr copy the object up (metadata only) first.
func (n *node) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	if c := n.current(); c != n {
		return c.Setxattr(ctx, attr, data, flags)
	}
	if isPrivateXattr(attr) {
		return syscall.EPERM
	}
	if attr == "security.capability" {
		n.privilegesMayChange()
	}
	return toErrno(n.changeXattr(func(dirfd int, name string) error {
		return setxattrAt(dirfd, name, attr, data, int(flags))
	}))
}

func (n *node) Removexattr(ctx context.Context, attr string) syscall.Errno {
	if c := n.current(); c != n {
		return c.Removexattr(ctx, attr)
	}
	if isPrivateXattr(attr) {
		return syscall.ENODATA
	}
	return toErrno(n.changeXattr(func(dirfd int, name string) error {
		return removexattrAt(dirfd, name, attr)
	}))
}

func (n *node) changeXattr(change func(dirfd int, name string) error) error {
	if n.u.upper == nil || n.u.cfg.ReadOnly {
		return unix.EROFS
	}
	if err := n.copyUp(ctx0, false); err != nil {
		return err
	}
	return n.withObject(upperObject, func(dirfd int, name string) error {
		n.xattrs.forget()
		return change(dirfd, name)
	})
}
