package fs

import (
	"math"

	"golang.org/x/sys/unix"
)

// dirAttr is a lower directory's attributes, kept with the listing of the
// directory so that a stat of it needs no system call.
//
// The kernel asks for them often: reading a directory through FUSE marks
// its atime stale (fuse_invalidate_atime; only a read-only mount is
// spared), so the next stat of every directory a walk has listed is a
// GETATTR, 10,000 of them in a second find over a large image. Lower
// layers do not change while mounted, so the attributes read once stay
// true. They are read right after the scan of the directory, so the atime
// is the one that read left (relatime may have moved it), as a stat on
// overlayfs would show.
//
// 64 bytes, in place in the listing. Times are kept as nanoseconds; a
// directory whose times do not fit (before 1678 or after 2262, which a
// layer from a hostile tar may hold) is not kept and is stat'ed each time.
type dirAttr struct {
	mode, nlink, uid, gid uint32
	blksize               int32
	// from is the lower layer the attributes are from, plus one: the
	// zero dirAttr (the listing of a directory with no lower part)
	// keeps nothing.
	from                uint32
	size, blocks        int64
	atime, mtime, ctime int64 // nanoseconds since the epoch
}

// newDirAttr keeps st, the attributes of a directory of layer li, if its
// times and counts fit.
func newDirAttr(li int, st *unix.Stat_t) dirAttr {
	atime, ok1 := timespecNanos(st.Atim)
	mtime, ok2 := timespecNanos(st.Mtim)
	ctime, ok3 := timespecNanos(st.Ctim)
	if !ok1 || !ok2 || !ok3 || st.Nlink > math.MaxUint32 || st.Blksize > math.MaxInt32 || st.Blksize < 0 || li >= math.MaxUint32 {
		return dirAttr{}
	}
	return dirAttr{
		mode: st.Mode, nlink: uint32(st.Nlink), uid: st.Uid, gid: st.Gid,
		blksize: int32(st.Blksize), from: uint32(li) + 1,
		size: st.Size, blocks: st.Blocks,
		atime: atime, mtime: mtime, ctime: ctime,
	}
}

// statOf fills st with the attributes kept for layer li's directory and
// reports whether there are any. Ino and the device are left zero: the
// caller shows its own inode number.
func (a *dirAttr) statOf(li int, st *unix.Stat_t) bool {
	if a.from == 0 || int(a.from) != li+1 {
		return false
	}
	*st = unix.Stat_t{
		Mode: a.mode, Nlink: uint64(a.nlink), Uid: a.uid, Gid: a.gid,
		Blksize: int64(a.blksize), Size: a.size, Blocks: a.blocks,
		Atim: unix.NsecToTimespec(a.atime),
		Mtim: unix.NsecToTimespec(a.mtime),
		Ctim: unix.NsecToTimespec(a.ctime),
	}
	return true
}

// timespecNanos is ts in nanoseconds, if that fits in an int64.
func timespecNanos(ts unix.Timespec) (int64, bool) {
	const maxSec = math.MaxInt64/1_000_000_000 - 1
	if ts.Sec > maxSec || ts.Sec < -maxSec || ts.Nsec < 0 || ts.Nsec >= 1e9 {
		return 0, false
	}
	return ts.Sec*1e9 + ts.Nsec, true
}
