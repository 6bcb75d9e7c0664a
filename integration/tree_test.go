package integration

import (
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/strata-fs/strata/whiteout"
)

// node is what a tree walk records about one path (lstat-based; symlinks
// are never followed).
type node struct {
	typ     string
	perm    uint32
	uid     uint32
	gid     uint32
	size    int64
	sha     string
	extents string   // for display, or the lseek error
	dataExt []extent // SEEK_DATA/SEEK_HOLE data ranges
	target  string
	nlink   uint64
	rdev    string
	xattrs  string
	mtime   unix.Timespec
	ino     uint64
	dev     uint64
	// dino and dtype are what the parent's readdir said (not for the root).
	dino  uint64
	dtype uint8
	// dots, for a directory, checks its "." and ".." entries.
	dots string
}

// tree is a walk of a mount: nodes by relative path ("" is the root), and
// the problems that are wrong on their own whatever the other side shows
// (a private overlay xattr visible, an unreadable file).
type tree struct {
	nodes    map[string]*node
	problems []string
}

// walkTree records every path under root.
func walkTree(root string) (*tree, error) {
	fd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", root, err)
	}
	defer unix.Close(fd)
	t := &tree{nodes: map[string]*node{}}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, err
	}
	rootNode := t.record("", fd, ".", &st)
	t.walkDir(fd, "", rootNode, 0)
	return t, nil
}

// record fills a node for name in the directory open as dirfd.
func (t *tree) record(p string, dirfd int, name string, st *unix.Stat_t) *node {
	n := &node{
		typ:   typeLetter(st.Mode),
		perm:  st.Mode & 0o7777,
		uid:   st.Uid,
		gid:   st.Gid,
		mtime: st.Mtim,
		ino:   st.Ino,
		dev:   st.Dev,
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
	case unix.S_IFREG:
		n.size, n.nlink = st.Size, st.Nlink
		n.sha, n.extents, n.dataExt = t.hashFile(p, dirfd, name)
	case unix.S_IFLNK:
		n.size, n.nlink = st.Size, st.Nlink
		buf := make([]byte, 8192)
		if k, err := unix.Readlinkat(dirfd, name, buf); err == nil {
			n.target = string(buf[:k])
		} else {
			t.problem(p, "readlink: "+errString(err))
		}
	case unix.S_IFCHR, unix.S_IFBLK:
		n.nlink = st.Nlink
		n.rdev = fmt.Sprintf("%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))
	default:
		n.nlink = st.Nlink
	}
	n.xattrs = t.xattrs(p, fmt.Sprintf("/proc/self/fd/%d/%s", dirfd, name))
	t.nodes[p] = n
	return n
}

func (t *tree) problem(p, msg string) {
	t.problems = append(t.problems, fmt.Sprintf("%s: %s", displayPath(p), msg))
}

func displayPath(p string) string { return "/" + p }

func (t *tree) hashFile(p string, dirfd int, name string) (sum, extents string, exts []extent) {
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		t.problem(p, "open: "+errString(err))
		return "unreadable", "", nil
	}
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	h := sha256.New()
	size, err := io.Copy(h, f)
	if err != nil {
		t.problem(p, "read: "+errString(err))
		return "unreadable", "", nil
	}
	exts, err = dataExtents(fd, size)
	if err != nil {
		extents = "seek: " + errString(err)
	} else {
		extents = fmt.Sprint(exts)
	}
	return fmt.Sprintf("%x", h.Sum(nil)), extents, exts
}

// xattrs lists name=value pairs, sorted. A private overlay xattr is a
// problem on either side: it must never be visible.
func (t *tree) xattrs(p, procPath string) string {
	names, err := listXattrs(procPath)
	if err != nil {
		t.problem(p, "listxattr: "+errString(err))
		return "?"
	}
	sort.Strings(names)
	var pairs []string
	for _, name := range names {
		if whiteout.IsPrivateXattr(name) {
			t.problem(p, "private xattr visible: "+name)
		}
		v, err := lgetxattrBytes(procPath, name)
		if err != nil {
			pairs = append(pairs, name+"=<"+errString(err)+">")
			continue
		}
		pairs = append(pairs, fmt.Sprintf("%s=%q", name, v))
	}
	return strings.Join(pairs, " ")
}

// walkDir records the entries of the directory open as fd (relative path
// p), checks its "." and ".." entries, and descends.
func (t *tree) walkDir(fd int, p string, self *node, depth int) {
	ents, err := readDirents(fd, 32<<10, false)
	if err != nil {
		t.problem(p, "readdir: "+errString(err))
		return
	}
	self.dots = checkDots(fd, ents, depth == 0)
	for _, e := range ents {
		if e.name == "." || e.name == ".." {
			continue
		}
		child := path.Join(p, e.name)
		var st unix.Stat_t
		if err := unix.Fstatat(fd, e.name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			t.problem(child, "listed by readdir but lstat: "+errString(err))
			continue
		}
		n := t.record(child, fd, e.name, &st)
		n.dino, n.dtype = e.ino, e.typ
		if st.Mode&unix.S_IFMT != unix.S_IFDIR {
			continue
		}
		cfd, err := unix.Openat(fd, e.name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			t.problem(child, "open dir: "+errString(err))
			continue
		}
		t.walkDir(cfd, child, n, depth+1)
		unix.Close(cfd)
	}
}

// checkDots reports whether "." and ".." are listed once each with the
// inode numbers of the directory and its parent.
func checkDots(fd int, ents []dirent, isRoot bool) string {
	var problems []string
	for _, dot := range []string{".", ".."} {
		count := 0
		for _, e := range ents {
			if e.name != dot {
				continue
			}
			count++
			if dot == ".." && isRoot {
				continue
			}
			var st unix.Stat_t
			if err := unix.Fstatat(fd, dot, &st, 0); err == nil && st.Ino != e.ino {
				problems = append(problems, dot+" d_ino!=st_ino")
			}
		}
		if count != 1 {
			problems = append(problems, fmt.Sprintf("%s listed %d times", dot, count))
		}
	}
	return listOrOK(problems)
}

// diff is one difference between the oracle's and the SUT's view.
type diff struct {
	path, field, oracle, sut string
}

// compareOptions says which fields a comparison looks at.
type compareOptions struct {
	// mtimeChecked reports whether the mtime of a path is determined by
	// the test (set by the layers or an op, not by the clock).
	mtimeChecked func(p string) bool
	// skipIdentity turns off inode-number classes, d_ino and st_nlink of
	// hard links (the interop check without index=on).
	skipIdentity bool
	// ignore leaves a path out entirely (documented exclusions).
	ignore func(p string) bool
}

// compareTrees lists every difference between the two walks.
func compareTrees(oracle, sut *tree, opt compareOptions) []diff {
	var diffs []diff
	for _, pr := range oracle.problems {
		diffs = append(diffs, diff{path: "(oracle)", field: "problem", oracle: pr})
	}
	for _, pr := range sut.problems {
		diffs = append(diffs, diff{path: "(sut)", field: "problem", sut: pr})
	}
	oClass, sClass := inodeClasses(oracle), inodeClasses(sut)
	sDev := sut.nodes[""].devOrZero()
	for _, p := range unionPaths(oracle, sut) {
		if opt.ignore != nil && opt.ignore(p) {
			continue
		}
		o, s := oracle.nodes[p], sut.nodes[p]
		if o == nil || s == nil {
			diffs = append(diffs, diff{p, "exists", existence(o), existence(s)})
			continue
		}
		add := func(field, ov, sv string) {
			if ov != sv {
				diffs = append(diffs, diff{p, field, ov, sv})
			}
		}
		compareNode(add, o, s, opt.mtimeChecked != nil && opt.mtimeChecked(p), !opt.skipIdentity)
		if !opt.skipIdentity {
			add("shares st_ino with", oClass[p], sClass[p])
		}
		if sutName() != "kernel" { // the self-check compares the kernel to itself only
			diffs = append(diffs, requiredOfSUT(p, s, sDev, !opt.skipIdentity)...)
		}
	}
	return diffs
}

// requiredOfSUT checks what the union semantics require of strata outright, whatever
// the kernel does: the kernel itself gets some of these wrong (a ".." whose
// d_ino is not its st_ino in a merged directory; no ".." at a FUSE root).
func requiredOfSUT(p string, s *node, rootDev uint64, withIdentity bool) []diff {
	var diffs []diff
	need := func(field string, ok bool, got string) {
		if !ok {
			diffs = append(diffs, diff{p, field, "(required)", got})
		}
	}
	need("st_dev is the mount's", s.dev == rootDev, fmt.Sprintf("st_dev %d, root's %d", s.dev, rootDev))
	if withIdentity {
		need("d_ino == st_ino", s.dino == 0 || s.dino == s.ino, fmt.Sprintf("d_ino %d, st_ino %d", s.dino, s.ino))
		need(". and .. entries", s.dots == "" || s.dots == "ok", s.dots)
	}
	return diffs
}

func (n *node) devOrZero() uint64 {
	if n == nil {
		return 0
	}
	return n.dev
}

func compareNode(add func(field, o, s string), o, s *node, withMtime, withIdentity bool) {
	add("type", o.typ, s.typ)
	add("mode", fmt.Sprintf("%04o", o.perm), fmt.Sprintf("%04o", s.perm))
	add("uid:gid", fmt.Sprintf("%d:%d", o.uid, o.gid), fmt.Sprintf("%d:%d", s.uid, s.gid))
	add("size", fmt.Sprint(o.size), fmt.Sprint(s.size))
	add("sha256", o.sha, s.sha)
	// Holes kept: the SUT may keep more holes than the kernel (which
	// copies up in 1 MiB chunks) but must have no data where it has a hole.
	if !extentsWithin(s.dataExt, o.dataExt) || strings.HasPrefix(s.extents, "seek:") {
		add("data outside the kernel's extents (SEEK_DATA/SEEK_HOLE)", o.extents, s.extents)
	}
	add("symlink target", o.target, s.target)
	add("rdev", o.rdev, s.rdev)
	add("xattrs", o.xattrs, s.xattrs)
	add("d_type", direntTypeLetter(o.dtype), direntTypeLetter(s.dtype))
	if withIdentity {
		add("st_nlink", fmt.Sprint(o.nlink), fmt.Sprint(s.nlink))
	}
	if withMtime {
		add("mtime", fmtTime(o.mtime), fmtTime(s.mtime))
	}
}

func fmtTime(ts unix.Timespec) string { return fmt.Sprintf("%d.%09d", ts.Sec, ts.Nsec) }

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func existence(n *node) string {
	if n == nil {
		return "missing"
	}
	return "present (" + n.typ + ")"
}

func unionPaths(a, b *tree) []string {
	seen := map[string]bool{}
	for p := range a.nodes {
		seen[p] = true
	}
	for p := range b.nodes {
		seen[p] = true
	}
	out := make([]string, 0, len(seen))
	for p := range seen {
		out = append(out, p)
	}
	sort.Strings(out)
	return out
}

// inodeClasses maps each path to the sorted list of the OTHER paths with
// the same st_ino ("-" if none): hard links, and nothing else, share one.
func inodeClasses(t *tree) map[string]string {
	byIno := map[uint64][]string{}
	for p, n := range t.nodes {
		byIno[n.ino] = append(byIno[n.ino], p)
	}
	out := map[string]string{}
	for _, paths := range byIno {
		sort.Strings(paths)
		for _, p := range paths {
			var others []string
			for _, q := range paths {
				if q != p {
					others = append(others, displayPath(q))
				}
			}
			out[p] = "-"
			if len(others) > 0 {
				out[p] = strings.Join(others, ",")
			}
		}
	}
	return out
}

// inodeNumbers maps each path to its st_ino, for the remount check.
func inodeNumbers(t *tree) map[string]uint64 {
	out := map[string]uint64{}
	for p, n := range t.nodes {
		out[p] = n.ino
	}
	return out
}

// formatDiffs renders differences as a table, at most limit rows.
func formatDiffs(diffs []diff, limit int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d difference(s) (oracle = kernel overlayfs, sut = %s):\n", len(diffs), sutName())
	for i, d := range diffs {
		if i == limit {
			fmt.Fprintf(&b, "  ... %d more\n", len(diffs)-limit)
			break
		}
		p := d.path
		if !strings.HasPrefix(p, "(") {
			p = displayPath(p)
		}
		ov, sv := abbreviatePair(d.oracle, d.sut)
		fmt.Fprintf(&b, "  %-40s %-24s oracle: %-30s sut: %s\n", p, d.field, orDash(ov), orDash(sv))
	}
	return b.String()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// abbreviatePair shortens two long values to the part where they differ,
// with some context, so a listing of 500 names shows the one that differs.
func abbreviatePair(a, b string) (string, string) {
	const limit, context = 160, 40
	if len(a) <= limit && len(b) <= limit {
		return a, b
	}
	pre := 0
	for pre < len(a) && pre < len(b) && a[pre] == b[pre] {
		pre++
	}
	suf := 0
	for suf < len(a)-pre && suf < len(b)-pre && a[len(a)-1-suf] == b[len(b)-1-suf] {
		suf++
	}
	cut := func(s string) string {
		start, end := max(pre-context, 0), min(len(s)-suf+context, len(s))
		out := s[start:end]
		if start > 0 {
			out = "…" + out
		}
		if end < len(s) {
			out += "…"
		}
		if len(out) > 2*limit {
			out = out[:2*limit] + "…"
		}
		return out
	}
	return cut(a), cut(b)
}

// extentsWithin reports whether every range of inner lies inside the union
// of outer's ranges (both sorted, non-overlapping).
func extentsWithin(inner, outer []extent) bool {
	j := 0
	for _, x := range inner {
		start := x.start
		for start < x.end {
			for j < len(outer) && outer[j].end <= start {
				j++
			}
			if j == len(outer) || outer[j].start > start {
				return false
			}
			start = outer[j].end
		}
	}
	return true
}
