package integration

import (
	"fmt"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// One Test function per item of the union semantics. Each case
// runs twice: as is, and with an unmount and remount of both targets
// between the ops and the tree comparison.

func runCases(t *testing.T, cases []scenario) {
	t.Helper()
	for _, sc := range cases {
		for _, remount := range []bool{false, true} {
			name := sc.name
			if remount {
				name += "/remount"
			}
			t.Run(name, func(t *testing.T) { runScenario(t, sc, remount) })
		}
	}
}

// capNetBindService is a security.capability value (VFS_CAP_REVISION_2)
// granting CAP_NET_BIND_SERVICE, permitted only.
const capNetBindService = "\x00\x00\x00\x02\x00\x04\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"

// Lookup down the layers; the first hit wins; whiteouts and opaque
// directories stop the search; every format is read and none is shown.
func TestLookupAndWhiteouts(t *testing.T) {
	var cases []scenario
	for _, wf := range allWhiteoutFormats {
		cases = append(cases, scenario{
			name: "whiteout-" + wf.String(),
			stack: []layer{
				{file("dir/top", "top"), whiteoutEntry("dir/gone", wf), whiteoutEntry("gonedir", wf), whiteoutEntry("dir/never-existed", wf)},
				{file("dir/gone", "mid"), file("dir/kept", "kept")},
				{file("dir/gone", "bottom"), dir("gonedir"), file("gonedir/f", "f"), file("dir/kept", "kept-bottom")},
			},
			ops: []op{
				opStat("dir/gone"), opRead("dir/gone"), opStat("gonedir"), opStat("gonedir/f"),
				opRead("dir/kept"), opReaddir("dir"), opReaddir(""), opStat("dir/never-existed"),
				opStat("dir/.wh.gone"), opGetxattr("dir", "trusted.overlay.opaque"),
				opCreate("dir/gone", 0o600), opWrite("dir/gone", 0, "reborn"), opRead("dir/gone"),
				opMkdir("gonedir", 0o700), opReaddir("gonedir"), opStat("gonedir/f"),
			},
		})
	}
	for _, of := range allOpaqueFormats {
		cases = append(cases, scenario{
			name: "opaque-" + of.String(),
			stack: []layer{
				{opaqueDir("od", of, mode(0o750)), file("od/new", "new")},
				{file("od/old", "old"), dir("od/sub"), file("od/sub/x", "x"), file("other", "o")},
			},
			ops: []op{
				opStat("od/old"), opStat("od/sub/x"), opReaddir("od"), opGetxattr("od", "trusted.overlay.opaque"),
				opGetxattr("od", "user.overlay.opaque"), opListxattr("od"), opStat("od/.wh..wh..opq"),
				opCreate("od/old", 0o644), opReaddir("od"), opRename("od", "od2", 0), opReaddir("od2"),
			},
		})
	}
	cases = append(cases,
		scenario{
			name: "first-hit-wins",
			stack: []layer{
				{file("a", "L0"), dir("d", mode(0o700), owner(1, 1))},
				{file("a", "L1"), file("b", "L1"), dir("d", mode(0o755)), file("d/x", "L1")},
				{file("a", "L2"), file("b", "L2"), file("c", "L2"), symlink("d", "a")},
			},
			ops: []op{opRead("a"), opRead("b"), opRead("c"), opStat("d"), opReaddir("d"), opRead("d/x")},
		},
		scenario{
			name: "readded-above-whiteout",
			stack: []layer{
				{file("x", "re-added"), dir("d"), file("d/y", "new-y")},
				{whiteoutEntry("x", wfCharDev), whiteoutEntry("d", wfOCI)},
				{file("x", "original"), dir("d"), file("d/z", "old-z")},
			},
			ops: []op{opRead("x"), opReaddir("d"), opStat("d/z")},
		},
		// An xattr whiteout marks its parent "opaque=x": that parent is
		// NOT opaque, the layers below still show through it. (A whiteout
		// inside an opaque or unmerged directory is not tested: the kernel
		// lists it and then fails its lookup.)
		scenario{
			name: "xattr-whiteout-parent-stays-transparent",
			stack: []layer{
				{file("d/keep", "k"), whiteoutEntry("d/gone", wfUserXattr), whiteoutEntry("e/gone", wfTrustedXattr)},
				{file("d/gone", "g"), file("d/below", "b"), file("e/gone", "g"), file("e/below", "b")},
			},
			ops: []op{opReaddir("d"), opStat("d/gone"), opStat("d/below"), opReaddir("e"), opListxattr("d"), opListxattr("e")},
		},
		scenario{
			name: "name-too-long",
			stack: []layer{
				{file("d/short", "s")},
				{file("d/other", "o")},
			},
			ops: []op{
				opStat("d/" + strings.Repeat("n", 255)), opStat("d/" + strings.Repeat("n", 256)),
				opCreate("d/"+strings.Repeat("n", 256), 0o644), opMkdir("d/"+strings.Repeat("m", 256), 0o755),
				opCreate("d/"+strings.Repeat("n", 255), 0o644), opReaddir("d"),
			},
		},
	)
	runCases(t, cases)
}

// Merged readdir: each name once, whiteouts hidden, "." and "..", offsets
// that survive seekdir/telldir and a changing directory, d_ino, d_type.
func TestMergedReaddir(t *testing.T) {
	var top, middle, bottom layer
	for i := 0; i < 40; i++ {
		bottom = append(bottom, file(fmt.Sprintf("big/bottom-%02d", i), "b"))
		if i%3 == 0 {
			middle = append(middle, file(fmt.Sprintf("big/bottom-%02d", i), "m"))
		}
		if i%5 == 0 {
			top = append(top, whiteoutEntry(fmt.Sprintf("big/bottom-%02d", i), allWhiteoutFormats[i/5%4]))
		}
		if i%7 == 0 {
			top = append(top, file(fmt.Sprintf("big/top-%02d", i), "t"))
		}
	}
	bottom = append(bottom, fifo("types/fifo"), socketNode("types/sock"), charDev("types/chr", 1, 3),
		blockDev("types/blk", 7, 0), symlink("types/link", "nowhere"), dir("types/dir"), file("types/file", "f"))
	middle = append(middle, dir("types/dir2"))
	stack := []layer{top, middle, bottom}
	var creates []op
	for i := 0; i < 50; i++ {
		creates = append(creates, opCreate(fmt.Sprintf("big/new-%02d", i), 0o644))
	}
	runCases(t, []scenario{
		{name: "three-layers", stack: stack, ops: []op{opReaddir(""), opReaddir("big"), opReaddir("types")}},
		{name: "after-creates", stack: stack, ops: append(creates, opReaddir("big"), opUnlink("big/bottom-01"), opReaddir("big"))},
		{name: "changing-while-read", stack: stack, ops: []op{
			opReaddirChanging("big", "added", "bottom-39"), opReaddir("big"),
			opReaddirChanging("types", "added", "file"), opReaddir("types"),
		}},
		{name: "copied-up-dir", stack: stack, ops: []op{opChmod("types/dir", 0o700), opCreate("types/dir/n", 0o644), opReaddir("types"), opReaddir("types/dir")}},
		{name: "empty-after-deletes", stack: stack, ops: []op{
			opUnlink("types/fifo"), opUnlink("types/sock"), opUnlink("types/chr"), opUnlink("types/blk"),
			opUnlink("types/link"), opRmdir("types/dir"), opRmdir("types/dir2"), opUnlink("types/file"), opReaddir("types"),
		}},
	})
}

// The namespace calls, with whiteouts where a lower name must stay hidden.
func TestNamespaceOps(t *testing.T) {
	stack := []layer{
		{file("d/upperfile", "u"), dir("emptyish")},
		{file("d/lowerfile", "l", mode(0o640), owner(7, 8)), dir("d/lowerdir"), file("d/lowerdir/f", "f"),
			file("emptyish/a", "a"), file("emptyish/b", "b"), symlink("d/lnk", "lowerfile"), dir("d/emptydir")},
	}
	runCases(t, []scenario{
		{name: "create", stack: stack, ops: []op{
			opCreate("d/new", 0o640), opOpen("d/lowerfile", unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY, 0o644),
			opOpen("d/new2", unix.O_CREAT|unix.O_EXCL|unix.O_RDWR, 0o600), opOpen("nodir/x", unix.O_CREAT|unix.O_WRONLY, 0o644),
			opOpen("d/lowerfile/x", unix.O_CREAT|unix.O_WRONLY, 0o644), opOpen("d/lowerdir", unix.O_WRONLY, 0),
			opOpen("d/lowerfile", unix.O_RDONLY|unix.O_DIRECTORY, 0), opStat("d/new"),
		}},
		{name: "mkdir", stack: stack, ops: []op{
			opMkdir("d/m", 0o750), opMkdir("d/m/n", 0o700), opMkdir("d/lowerdir", 0o755), opMkdir("d/lowerfile", 0o755),
			opMkdir("d/lowerdir/sub", 0o711), opReaddir("d/lowerdir"),
		}},
		{name: "mknod", stack: stack, ops: []op{
			opMknod("d/fifo", unix.S_IFIFO, 0o644, 0, 0), opMknod("d/chr", unix.S_IFCHR, 0o600, 1, 7),
			opMknod("d/blk", unix.S_IFBLK, 0o600, 8, 1), opMknod("d/sock", unix.S_IFSOCK, 0o755, 0, 0),
			opMknod("d/lowerfile", unix.S_IFIFO, 0o644, 0, 0), opMknod("d/lowerdir/fifo", unix.S_IFIFO, 0o600, 0, 0),
			opReaddir("d"),
		}},
		{name: "symlink-readlink", stack: stack, ops: []op{
			opSymlink("../d/lowerfile", "d/s1"), opSymlink("/absolute/target", "d/s2"), opSymlink(strings.Repeat("x", 1000), "d/s3"),
			opReadlink("d/s1"), opReadlink("d/lnk"), opReadlink("d/lowerfile"), opSymlink("t", "d/lowerfile"), opRead("d/s1"),
		}},
		{name: "link", stack: stack, ops: []op{
			opLink("d/lowerfile", "d/hl1"), opLink("d/lowerfile", "hl2"), opLink("d/upperfile", "d/hl3"),
			opLink("d/lowerdir", "d/hl4"), opLink("d/lnk", "d/hl5"), opLink("d/missing", "d/hl6"),
			opLink("d/lowerfile", "d/upperfile"), opStat("d/lowerfile"), opStat("d/hl1"), opStat("hl2"),
			opWrite("d/hl1", 0, "L"), opRead("d/lowerfile"), opRead("hl2"),
		}},
		{name: "unlink", stack: stack, ops: []op{
			opUnlink("d/lowerfile"), opUnlink("d/upperfile"), opUnlink("d/lnk"), opUnlink("d/lowerdir"),
			opUnlink("d/missing"), opStat("d/lowerfile"), opReaddir("d"), opCreate("d/lowerfile", 0o600), opRead("d/lowerfile"),
		}},
		{name: "rmdir", stack: stack, ops: []op{
			opRmdir("d/lowerdir"), opRmdir("d/emptydir"), opRmdir("d/lowerfile"), opUnlink("d/lowerdir/f"),
			opRmdir("d/lowerdir"), opStat("d/lowerdir"), opMkdir("d/lowerdir", 0o700), opReaddir("d/lowerdir"),
		}},
		{name: "rmdir-looks-empty", stack: stack, ops: []op{
			opUnlink("emptyish/a"), opRmdir("emptyish"), opUnlink("emptyish/b"), opReaddir("emptyish"),
			opRmdir("emptyish"), opStat("emptyish"), opMkdir("emptyish", 0o755), opReaddir("emptyish"),
		}},
		{name: "concurrent", stack: stack, ops: []op{opConcurrentNamespace("d/lowerdir"), opReaddir("d/lowerdir")}},
		{name: "path-near-PATH_MAX", stack: stack, ops: longPathOps()},
	})
}

// longPathOps builds a directory chain whose relative path is near 4095
// bytes, inside the mount (a daemon joining "upperdir + path" fails it).
func longPathOps() []op {
	var ops []op
	p := "d/lowerdir"
	for len(p)+251 < 4000 {
		p += "/" + strings.Repeat(string(rune('a'+len(ops)%26)), 250)
		ops = append(ops, opMkdir(p, 0o755))
	}
	f := p + "/" + strings.Repeat("f", 4090-len(p)-1)
	ops = append(ops, opCreate(f, 0o644), opWrite(f, 0, "deep"), opRead(f), opStat(f), opReaddir(p),
		opRename(f, p+"/short", 0), opStat(p+"/short"))
	return ops
}

// rename of files and directories, with flags.
func TestRename(t *testing.T) {
	stack := []layer{
		{file("a/upper", "u"), dir("a/upperdir"), file("a/upperdir/u", "u")},
		{file("a/f", "f"), file("a/g", "g"), dir("a/sub", mode(0o750), owner(3, 4)), file("a/sub/one", "1"),
			dir("a/sub/deeper"), file("a/sub/deeper/two", "2", mtime(1500000000, 42)), symlink("a/sub/l", "one"),
			dir("b"), file("b/x", "x"), dir("empty"), dir("nonempty"), file("nonempty/n", "n"),
			dir("allgone"), file("allgone/1", "1"), file("allgone/2", "2")},
	}
	runCases(t, []scenario{
		{name: "file", stack: stack, ops: []op{
			opRename("a/f", "a/f2", 0), opRename("a/g", "b/g", 0), opRename("a/upper", "a/g2", 0),
			opRename("b/g", "a/f2", 0), opRename("a/missing", "a/x", 0), opRead("a/f2"), opStat("a/f"), opReaddir("a"),
		}},
		{name: "dir-with-lower-content", stack: stack, ops: []op{
			opRename("a/sub", "b/moved", 0), opReaddir("b/moved"), opRead("b/moved/deeper/two"), opStat("a/sub"),
			opRename("b/moved/deeper", "deeper-at-root", 0), opReaddir("deeper-at-root"), opCreate("a/sub", 0o644),
			opRename("b/moved", "a/sub2", 0), opReaddir("a/sub2"), opWrite("a/sub2/one", 1, "!"), opRead("a/sub2/one"),
		}},
		{name: "dir-back-and-forth", stack: stack, ops: []op{
			opRename("a/sub", "a/tmp", 0), opMkdir("a/sub", 0o700), opCreate("a/sub/new", 0o644),
			opRename("a/tmp", "a/sub/inner", 0), opReaddir("a/sub"), opReaddir("a/sub/inner"),
			opRename("a/sub/inner", "a/tmp", 0), opRmdir("a/sub"), opUnlink("a/sub/new"), opRmdir("a/sub"),
			opRename("a/tmp", "a/sub", 0), opReaddir("a/sub"), opRead("a/sub/one"),
		}},
		{name: "over-existing", stack: stack, ops: []op{
			opRename("a/f", "a/g", 0), opRename("a/sub", "empty", 0), opRename("b", "nonempty", 0),
			opRename("a/f", "a/sub", 0), opRename("a/upperdir", "a/g", 0), opRename("a", "a/sub/deeper/x", 0),
			opRename("a/g", "a/g", 0), opReaddir("empty"), opReaddir("a"),
		}},
		{name: "new-dir-over-emptied-lower-dir", stack: stack, ops: []op{
			opUnlink("allgone/1"), opUnlink("allgone/2"), opMkdir("fresh", 0o755), opCreate("fresh/f", 0o644),
			opRmdir("fresh"), opUnlink("fresh/f"), opRename("fresh", "allgone", 0), opReaddir("allgone"), opStat("allgone/1"),
		}},
		{name: "noreplace", stack: stack, ops: []op{
			opRename("a/f", "a/g", unix.RENAME_NOREPLACE), opRename("a/f", "a/h", unix.RENAME_NOREPLACE),
			opRename("a/sub", "empty", unix.RENAME_NOREPLACE), opRename("a/sub", "c", unix.RENAME_NOREPLACE),
			opUnlink("a/g"), opRename("a/h", "a/g", unix.RENAME_NOREPLACE), opReaddir("a"),
		}},
		{name: "exchange", stack: stack, ops: []op{
			opRename("a/f", "a/g", unix.RENAME_EXCHANGE), opRead("a/f"), opRead("a/g"),
			opRename("a/sub", "b", unix.RENAME_EXCHANGE), opReaddir("a/sub"), opReaddir("b"),
			opRename("a/upper", "nonempty", unix.RENAME_EXCHANGE), opRename("a/f", "a/none", unix.RENAME_EXCHANGE),
			opReaddir("nonempty"), opStat("a/upper"),
		}},
		{name: "whiteout-flag", stack: stack, ops: []op{
			opRename("a/f", "a/f3", unix.RENAME_WHITEOUT), opStat("a/f"), opRename("a/upper", "a/u2", unix.RENAME_WHITEOUT),
			opReaddir("a"), opRename("a/sub", "a/sub3", unix.RENAME_WHITEOUT),
		}},
		{name: "kinds-mismatch", stack: stack, ops: []op{
			opRename("a/f", "b", 0), opRename("b", "a/f", 0), opRename("a/sub/l", "a/sub2", 0),
			opRename("", "x", 0), opRename("a/sub", "a/sub/deeper/in-itself", 0),
		}},
	})
}

// Copy-up: holes kept; owner, mode, times, xattrs kept; one copy-up under
// concurrency; metadata-only copy-up for chmod/chown/utimes/xattrs.
func TestCopyUp(t *testing.T) {
	const mib = 1 << 20
	stack := []layer{
		{file("other", "o")},
		{
			dir("p", mode(0o751), owner(11, 12), mtime(1400000000, 1)),
			dir("p/q", mode(0o700), owner(13, 14), xattr("user.dir", "dx"), mtime(1400000001, 2)),
			file("p/q/f", "lower data\n", mode(0o4750), owner(1000, 1001), mtime(1234567890, 987654321),
				xattr("user.a", "1"), xattr("trusted.t", "2"), xattr("security.capability", capNetBindService)),
			sparse("sparse", 8*mib, map[int64]string{0: "head", 4 * mib: "middle"}),
			file("big", strings.Repeat("0123456789abcdef", 64<<10)),
			file("shared", strings.Repeat("s", 10000)),
		},
	}
	runCases(t, []scenario{
		{name: "parents-first-and-metadata", stack: stack, ops: []op{
			opAppend("p/q/f", "more\n"), opStat("p"), opStat("p/q"), opStat("p/q/f"), opListxattr("p/q/f"),
			opGetxattr("p/q/f", "security.capability"), opGetxattr("p/q", "user.dir"), opRead("p/q/f"),
		}},
		{name: "holes-kept", stack: stack, ops: []op{
			opSeekMap("sparse"), opWrite("sparse", 6*mib, "x"), opSeekMap("sparse"), opRead("sparse"),
		}},
		{name: "metadata-only-chmod", stack: stack, ops: []op{opChmod("big", 0o600), opRead("big"), opSeekMap("big"), opWrite("big", 5, "W"), opRead("big")}},
		{name: "metadata-only-chown", stack: stack, ops: []op{opChown("p/q/f", 5, 6), opRead("p/q/f"), opStat("p/q/f"), opListxattr("p/q/f")}},
		{name: "metadata-only-utimes", stack: stack, ops: []op{opUtimens("big", 1700000000, 555), opRead("big"), opChown("sparse", 1, 1), opSeekMap("sparse")}},
		{name: "metadata-only-xattr", stack: stack, ops: []op{opSetxattr("big", "user.new", "v", 0), opRead("big"), opRemovexattr("p/q/f", "user.a"), opRead("p/q/f")}},
		{name: "o-trunc-open", stack: stack, ops: []op{opOpen("big", unix.O_WRONLY|unix.O_TRUNC, 0), opStat("big"), opWrite("big", 0, "short"), opRead("big")}},
		{name: "concurrent-writers", stack: stack, ops: []op{opConcurrentWrite("shared", "writer"), opRead("shared")}},
		{name: "concurrent-writers-sparse", stack: stack, ops: []op{opConcurrentWrite("sparse", "w"), opSeekMap("sparse"), opRead("sparse")}},
	})
}

// chmod, chown, truncate, utimensat with nanoseconds, set-id bits cleared
// on write by a non-owner.
func TestAttributes(t *testing.T) {
	stack := []layer{
		{file("upper", "u")},
		{file("f", "0123456789"), dir("d", mode(0o755)), symlink("s", "f"), fifo("p"),
			file("suid", "x", mode(0o6777)), file("sgid-noexec", "x", mode(0o2666)), file("mine", "m", owner(1000, 1000), mode(0o4755))},
	}
	runCases(t, []scenario{
		{name: "chmod", stack: stack, ops: []op{
			opChmod("f", 0o600), opChmod("d", 0o1777), opChmod("s", 0o700), opChmod("p", 0o640), opChmod("upper", 0o4711),
			opStat("f"), opStat("d"), opStat("s"), opStat("p"), opStat("upper"),
		}},
		{name: "chown", stack: stack, ops: []op{
			opChown("f", 1000, 2000), opChown("d", 5, 5), opChown("s", 7, 7), opChown("p", 9, 9), opChown("suid", 1, 1),
			opStat("f"), opStat("s"), opStat("f"), opStat("suid"),
		}},
		{name: "truncate", stack: stack, ops: []op{
			opTruncate("f", 4), opRead("f"), opTruncate("f", 8192), opSeekMap("f"), opTruncate("upper", 0),
			opTruncate("d", 0), opTruncate("p", 0), opTruncate("s", 2), opRead("f"),
		}},
		{name: "utimens-ns", stack: stack, ops: []op{
			opUtimens("f", 1111111111, 123456789), opUtimens("d", 1222222222, 1), opUtimens("s", 1333333333, 999999999),
			opUtimens("p", 1444444444, 5), opUtimens("missing", 1, 1),
		}},
		{name: "setid-cleared-on-write-by-non-owner", stack: stack, ops: []op{
			asUser(1000, opWrite("suid", 0, "y")), opStat("suid"), asUser(1000, opWrite("sgid-noexec", 0, "y")), opStat("sgid-noexec"),
			asUser(1000, opWrite("mine", 0, "n")), opStat("mine"), asUser(1000, opRead("f")), asUser(1000, opWrite("f", 0, "z")),
		}},
	})
}

// get, set, list, remove; strata's own xattrs never visible.
func TestXattrs(t *testing.T) {
	stack := []layer{
		{opaqueDir("od", ofTrustedXattr), file("od/x", "x")},
		{file("f", "f", xattr("user.lower", "L"), xattr("trusted.lower", "T")), dir("d", xattr("user.d", "D")),
			symlink("s", "f", xattr("trusted.onlink", "S"))},
	}
	runCases(t, []scenario{
		{name: "get-set-list-remove", stack: stack, ops: []op{
			opListxattr("f"), opGetxattr("f", "user.lower"), opSetxattr("f", "user.new", "N", 0), opListxattr("f"),
			opSetxattr("f", "user.new", "again", unix.XATTR_CREATE), opSetxattr("f", "user.nope", "x", unix.XATTR_REPLACE),
			opSetxattr("f", "user.lower", "changed", unix.XATTR_REPLACE), opGetxattr("f", "user.lower"),
			opRemovexattr("f", "trusted.lower"), opRemovexattr("f", "trusted.lower"), opGetxattr("f", "user.missing"),
			opRead("f"), opListxattr("f"),
		}},
		{name: "dir-and-symlink", stack: stack, ops: []op{
			opListxattr("d"), opSetxattr("d", "user.d2", "2", 0), opRemovexattr("d", "user.d"), opListxattr("d"),
			opListxattr("s"), opGetxattr("s", "trusted.onlink"), opSetxattr("s", "trusted.onlink2", "x", 0),
			opSetxattr("s", "user.onlink", "x", 0), opListxattr("s"),
		}},
		{name: "private-never-visible", stack: stack, ops: []op{
			opListxattr("od"), opGetxattr("od", "trusted.overlay.opaque"), opChmod("f", 0o600),
			opGetxattr("f", "trusted.overlay.metacopy"), opGetxattr("f", "trusted.overlay.origin"), opListxattr("f"),
			opRename("d", "d2", 0), opGetxattr("d2", "trusted.overlay.redirect"), opListxattr("d2"),
		}},
		{name: "large-value", stack: stack, ops: []op{
			opSetxattr("f", "user.big", strings.Repeat("v", 4000), 0), opGetxattr("f", "user.big"), opListxattr("f"),
		}},
	})
}

// Files: read/write/append/pread/pwrite, mmap, fallocate, copy_file_range,
// SEEK_DATA/SEEK_HOLE, fsync, locks, O_TMPFILE, open-then-unlink/rename,
// read-only open before a copy-up.
func TestFileIO(t *testing.T) {
	const mib = 1 << 20
	stack := []layer{
		{file("u", "upper file")},
		{file("f", "0123456789"), file("g", "ghijklmnop"), dir("d"), sparse("sp", 4*mib, map[int64]string{mib: "data"}),
			file("big", strings.Repeat("b", 3*mib))},
	}
	runCases(t, []scenario{
		{name: "read-write-append", stack: stack, ops: []op{
			opRead("f"), opWrite("f", 3, "XY"), opRead("f"), opAppend("g", "++"), opRead("g"), opWrite("u", 20, "gap"),
			opRead("u"), opWrite("d", 0, "x"), opRead("d"), opRead("big"),
		}},
		{name: "mmap", stack: stack, ops: []op{
			opMmapWrite("f", 2, "MM", unix.MAP_SHARED), opRead("f"), opMmapWrite("g", 1, "pp", unix.MAP_PRIVATE), opRead("g"),
			opMmapWrite("u", 0, "U", unix.MAP_SHARED),
		}},
		{name: "fallocate", stack: stack, ops: []op{
			opFallocate("f", 0, 0, 100), opStat("f"), opFallocate("g", unix.FALLOC_FL_KEEP_SIZE, 0, 8192), opStat("g"),
			opFallocate("big", unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, mib, mib), opSeekMap("big"), opRead("big"),
			opFallocate("u", unix.FALLOC_FL_ZERO_RANGE, 2, 3), opRead("u"),
		}},
		{name: "copy_file_range", stack: stack, ops: []op{
			opCopyRange("f", 2, "g", 4, 5), opRead("g"), opCopyRange("big", 0, "d/new", 0, 2*mib), opRead("d/new"),
			opCopyRange("sp", 0, "d/sp2", 0, 4*mib), opRead("d/sp2"), opCopyRange("missing", 0, "d/x", 0, 1),
		}},
		{name: "seek-data-hole", stack: stack, ops: []op{opSeekMap("sp"), opSeekMap("f"), opSeekMap("u"), opTruncate("f", 2*mib), opSeekMap("f")}},
		{name: "fsync", stack: stack, ops: []op{opFsync("f", "sync"), opRead("f"), opFsync("u", "S"), opRead("u")}},
		{name: "locks", stack: stack, ops: []op{opLocks("f"), opLocks("u"), opRead("f")}},
		{name: "o_tmpfile", stack: stack, ops: []op{
			opTmpfile("d", "anon", ""), opTmpfile("d", "linked", "d/from-tmp"), opRead("d/from-tmp"), opTmpfile("", "root", "r"),
			opReaddir("d"),
		}},
		{name: "open-then-unlink", stack: stack, ops: []op{opOpenUnlinked("f", "W"), opStat("f"), opOpenUnlinked("u", "V"), opReaddir("")}},
		{name: "open-then-rename", stack: stack, ops: []op{opOpenRenamed("g", "d/g2", "R"), opRead("d/g2"), opOpenRenamed("u", "u2", "Q")}},
		{name: "read-only-open-before-copy-up", stack: stack, ops: []op{opReadBeforeCopyUp("f", "NEW"), opRead("f"), opReadBeforeCopyUp("u", "x")}},
	})
}

// Identity: st_ino across copy-up and remount, one st_dev, lower hard
// links one inode with the right st_nlink, also after copy-up.
func TestIdentity(t *testing.T) {
	stack := []layer{
		{file("top", "t")},
		{file("h/a", "linked"), hardlink("h/b", "h/a"), hardlink("h/c", "h/a"), file("solo", "s"), dir("dd"), file("dd/x", "x")},
	}
	runCases(t, []scenario{
		{name: "copy-up-keeps-inode", stack: stack, ops: []op{opChmod("solo", 0o600), opWrite("dd/x", 0, "y"), opChown("dd", 4, 4)}},
		{name: "hardlinks-chmod-one-name", stack: stack, ops: []op{opChmod("h/a", 0o600), opStat("h/b"), opStat("h/c")}},
		{name: "hardlinks-write-one-name", stack: stack, ops: []op{opWrite("h/b", 0, "LINKED"), opRead("h/a"), opRead("h/c"), opStat("h/a")}},
		{name: "hardlinks-link-and-unlink", stack: stack, ops: []op{
			opLink("h/a", "h/d"), opStat("h/b"), opUnlink("h/c"), opStat("h/a"), opWrite("h/d", 0, "D"), opRead("h/b"),
		}},
		{name: "hardlinks-rename-one-name", stack: stack, ops: []op{opRename("h/a", "moved", 0), opChmod("moved", 0o640), opStat("h/b"), opRename("h", "h2", 0)}},
		// Renaming over one name of a lower file that was never
		// copied up leaves the others one link fewer, as unlink does.
		{name: "hardlinks-rename-over-never-copied", stack: stack, ops: []op{opRename("solo", "h/b", 0), opStat("h/a"), opStat("h/c"), opRead("h/b")}},
		// A name in another directory than the one the copy-up went
		// through: its directory is copied up before the name is
		// linked up and moved.
		{name: "hardlinks-rename-name-in-other-dir", stack: []layer{{file("p/a", "linked"), hardlink("q/b", "p/a"), file("r/c", "c")}}, ops: []op{
			opWrite("p/a", 0, "L"), opRename("q/b", "moved", 0), opStat("moved"), opRead("p/a"), opRename("r/c", "p/a", unix.RENAME_EXCHANGE), opRead("r/c"),
		}},
		// Renaming a file over a name still only in the lower layer
		// takes one name from the copied-up inode.
		{name: "hardlinks-rename-over-lower-name", stack: stack, ops: []op{
			opRename("h/a", "moved", 0), opRename("solo", "h/b", 0), opStat("moved"), opStat("h/c"), opRename("top", "h/c", 0), opStat("moved"),
		}},
		{
			name: "layers-on-different-filesystems",
			stack: []layer{
				{file("one", "layer0-one"), file("two", "layer0-two"), file("three", "layer0-three")},
				{file("four", "layer1-four"), file("five", "layer1-five"), file("six", "layer1-six")},
			},
			tmpfsLayers:        []int{0, 1},
			extraOracleOptions: []string{"xino=on"},
			ops:                []op{opReaddir(""), opChmod("four", 0o600), opWrite("one", 0, "X")},
		},
	})
}

// statfs reports the upper filesystem; with no upper, the lowers.
func TestStatfs(t *testing.T) {
	stack := []layer{{file("a", "a"), dir("d")}, {file("b", "b")}}
	runCases(t, []scenario{
		{name: "with-upper", stack: stack, ops: []op{opStatfs(""), opStatfs("d"), opStatfs("b")}},
		{name: "read-only", stack: stack, readOnly: true, ops: []op{
			opStatfs(""), opStatfs("a"), opWrite("a", 0, "x"), opCreate("new", 0o644), opMkdir("dd", 0o755),
			opChmod("a", 0o600), opUnlink("b"), opSetxattr("a", "user.x", "y", 0), opRead("b"), opReaddir(""),
		}},
	})
}

// A stack as deep as the kernel allows (500 layers): lookups, readdir,
// copy-up from the bottom layer, and a directory spread over many layers
// renamed.
func TestDeepStack(t *testing.T) {
	const depth = 500
	stack := make([]layer, depth)
	for i := 0; i < depth; i++ {
		l := layer{file(fmt.Sprintf("f%03d", i), fmt.Sprintf("only in layer %d", i)), file("shared", fmt.Sprintf("layer %d", i))}
		if i%50 == 0 {
			l = append(l, file(fmt.Sprintf("spread/from-%03d", i), "s"))
		}
		if i == 100 {
			l = append(l, whiteoutEntry("f300", wfCharDev), whiteoutEntry("spread/from-450", wfOCI))
		}
		stack[i] = l
	}
	runCases(t, []scenario{{name: "500-layers", stack: stack, ops: []op{
		opRead("shared"), opRead("f499"), opStat("f300"), opStat("f250"), opStat("missing"), opReaddir("spread"),
		opWrite("f499", 0, "X"), opRead("f499"), opRename("spread", "moved", 0), opReaddir("moved"), opReaddir(""),
	}}})
}
