package fs

import (
	"context"
	"errors"
	"fmt"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

var (
	_ gofs.NodeSetattrer     = (*node)(nil)
	_ gofs.NodeGetxattrer    = (*node)(nil)
	_ gofs.NodeSetxattrer    = (*node)(nil)
	_ gofs.NodeListxattrer   = (*node)(nil)
	_ gofs.NodeRemovexattrer = (*node)(nil)
)

// Setattr changes mode, owner, size and times. A lower object is copied up
// first: metadata only, unless the size changes to something other than 0.
func (n *node) Setattr(ctx context.Context, fh gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if err := n.setattr(fh, in); err != nil {
		return toErrno(err)
	}
	if in.Valid&fuse.FATTR_KILL_SUIDGID != 0 {
		if err := n.killSetID(ctx); err != nil {
			return toErrno(err)
		}
	}
	return n.Getattr(ctx, fh, out)
}

// killSetID drops set-id bits after a chown or truncate by a caller
// without CAP_FSETID (the kernel says so with FATTR_KILL_SUIDGID under
// HANDLE_KILLPRIV_V2): setuid always, setgid when group-executable or the
// caller is not in the file's group, as a local filesystem does.
func (n *node) killSetID(ctx context.Context) error {
	n.u.treeMu.RLock()
	defer n.u.treeMu.RUnlock()
	n.mu.Lock()
	defer n.mu.Unlock()
	dirfd, name, err := n.openObject()
	if err != nil {
		return err
	}
	defer unix.Close(dirfd)
	flags := unix.AT_SYMLINK_NOFOLLOW
	if name == "" {
		flags |= unix.AT_EMPTY_PATH
	}
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, name, &st, flags); err != nil {
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
	return fchmodat2(dirfd, name, mode&0o7777, flags)
}

func (n *node) setattr(fh gofs.FileHandle, in *fuse.SetAttrIn) error {
	n.mu.Lock()
	n.xattrs.forget() // chown and truncate may drop security.capability
	n.mu.Unlock()
	size, hasSize := in.GetSize()
	if f := asFile(fh); f != nil && f.upper {
		return n.setattrFd(f.fd, in)
	}
	if err := n.copyUp(ctx0, hasSize && size != 0); err != nil {
		return err
	}
	n.u.treeMu.RLock()
	defer n.u.treeMu.RUnlock()
	n.mu.Lock()
	defer n.mu.Unlock()
	dirfd, name, err := n.openObject()
	if err != nil {
		return err
	}
	defer unix.Close(dirfd)
	if hasSize {
		fd, err := unix.Openat(dirfd, name, unix.O_WRONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open for truncate: %w", err)
		}
		if size == 0 && n.metacopy {
			removexattrAt(fd, "", n.u.overlayNS+"metacopy")
			removexattrAt(fd, "", n.u.overlayNS+"redirect")
			n.metacopy, n.hasLower = false, false
		}
		err = unix.Ftruncate(fd, int64(size))
		unix.Close(fd)
		if err != nil {
			return fmt.Errorf("truncate: %w", err)
		}
	}
	return n.setattrAt(dirfd, name, in)
}

// setattrAt applies owner, mode and times to dirfd/name (name "" is dirfd).
func (n *node) setattrAt(dirfd int, name string, in *fuse.SetAttrIn) error {
	flags := unix.AT_SYMLINK_NOFOLLOW
	if name == "" {
		flags |= unix.AT_EMPTY_PATH
	}
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
	known bool
	names map[string]bool
}

func (x *xattrNames) forget() { x.known, x.names = false, nil }

// has reports whether attr may exist; on any doubt it says yes and the
// caller asks the filesystem.
func (x *xattrNames) has(dirfd int, name, attr string) bool {
	if !x.known {
		names, err := listXattrNames(dirfd, name)
		if err != nil {
			return true
		}
		x.names = make(map[string]bool, len(names))
		for _, nm := range names {
			x.names[nm] = true
		}
		x.known = true
	}
	return x.names[attr]
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
	dir, base := splitRel(n.lower.rel)
	fd, err := n.u.lowers[n.lower.layer].openDir(dir)
	return fd, base, err
}

func (n *node) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	if isPrivateXattr(attr) {
		return 0, syscall.ENODATA
	}
	n.u.treeMu.RLock()
	defer n.u.treeMu.RUnlock()
	n.mu.Lock()
	defer n.mu.Unlock()
	dirfd, name, err := n.objectAt()
	if err != nil {
		return 0, toErrno(err)
	}
	defer unix.Close(dirfd)
	if !n.xattrs.has(dirfd, name, attr) {
		// ls -l asks every file for security.selinux and ACLs; most
		// have neither, and the cached name list answers that.
		return 0, syscall.ENODATA
	}
	sz, err := getxattrAt(dirfd, name, attr, dest)
	if err != nil {
		return 0, toErrno(err)
	}
	return uint32(sz), 0
}

func (n *node) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	n.u.treeMu.RLock()
	defer n.u.treeMu.RUnlock()
	n.mu.Lock()
	defer n.mu.Unlock()
	dirfd, name, err := n.objectAt()
	if err != nil {
		return 0, toErrno(err)
	}
	defer unix.Close(dirfd)
	names, err := listXattrNames(dirfd, name)
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
	if isPrivateXattr(attr) {
		return syscall.EPERM
	}
	return toErrno(n.changeXattr(func(dirfd int, name string) error {
		return setxattrAt(dirfd, name, attr, data, int(flags))
	}))
}

func (n *node) Removexattr(ctx context.Context, attr string) syscall.Errno {
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
	n.u.treeMu.RLock()
	defer n.u.treeMu.RUnlock()
	n.mu.Lock()
	defer n.mu.Unlock()
	n.xattrs.forget()
	dirfd, name, err := n.openObject()
	if err != nil {
		return err
	}
	defer unix.Close(dirfd)
	if err := change(dirfd, name); err != nil {
		if errors.Is(err, unix.ENOTSUP) {
			return unix.EOPNOTSUPP
		}
		return err
	}
	return nil
}
