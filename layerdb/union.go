package layerdb

import (
	"fmt"
	"sort"

	"golang.org/x/sys/unix"

	"github.com/strata-fs/strata/whiteout"
)

// layerDir is one directory of one layer in a union: fd is open on it and
// layer is the layer's index, 0 the topmost.
type layerDir struct {
	fd    int
	layer int
}

// unionEntry is one name of a merged directory: the topmost layer that has
// it decides its type and metadata; a directory also lists, top first, the
// same directory in the layers below that show through.
type unionEntry struct {
	name  string
	layer int
	dirfd int // the directory (in layer) that holds name
	st    unix.Stat_t
	// below are the layers under layer whose same-named directory merges
	// into this one (only for directories).
	below []layerDir
}

func (e *unionEntry) isDir() bool { return e.st.Mode&unix.S_IFMT == unix.S_IFDIR }

// listUnion merges one directory across layers, as overlayfs does: the first
// layer with a name wins, a whiteout hides the name in every layer below, an
// opaque directory hides everything below it. Whiteout markers themselves
// are never returned.
func listUnion(dirs []layerDir) ([]*unionEntry, error) {
	found := map[string]*unionEntry{}
	hidden := map[string]bool{}
	// open tells whether a directory entry still merges with lower layers.
	open := map[string]bool{}
	for _, d := range dirs {
		names, err := readDirNames(d.fd)
		if err != nil {
			return nil, err
		}
		opaque := whiteout.IsOpaque(d.fd)
		var hideBelow []string
		for _, name := range names {
			if whiteout.IsOCIOpaque(name) {
				opaque = true
				continue
			}
			if target, ok := whiteout.OCITarget(name); ok {
				hideBelow = append(hideBelow, target)
				continue
			}
			if hidden[name] {
				continue
			}
			var st unix.Stat_t
			if err := unix.Fstatat(d.fd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				return nil, fmt.Errorf("stat %q in layer %d: %w", name, d.layer, err)
			}
			if e, ok := found[name]; ok {
				mergeBelow(e, d, name, &st, open)
				continue
			}
			if whiteout.IsWhiteout(d.fd, name, &st) {
				hideBelow = append(hideBelow, name)
				continue
			}
			e := &unionEntry{name: name, layer: d.layer, dirfd: d.fd, st: st}
			found[name] = e
			open[name] = e.isDir()
		}
		for _, n := range hideBelow {
			hidden[n] = true
		}
		if opaque {
			break
		}
	}
	out := make([]*unionEntry, 0, len(found))
	for _, e := range found {
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out, nil
}

// mergeBelow adds a lower layer's same-named directory to e while nothing in
// between (a file or a whiteout) has cut the name off.
func mergeBelow(e *unionEntry, d layerDir, name string, st *unix.Stat_t, open map[string]bool) {
	if !open[name] {
		return
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		open[name] = false
		return
	}
	e.below = append(e.below, d)
}

// openChildren opens, top first, the directory e in every layer that merges
// into it. The caller closes the fds with closeDirs.
func openChildren(e *unionEntry) ([]layerDir, error) {
	var out []layerDir
	for _, d := range append([]layerDir{{fd: e.dirfd, layer: e.layer}}, e.below...) {
		fd, err := openDirAt(d.fd, e.name)
		if err != nil {
			closeDirs(out)
			return nil, fmt.Errorf("open %q in layer %d: %w", e.name, d.layer, err)
		}
		out = append(out, layerDir{fd: fd, layer: d.layer})
	}
	return out, nil
}

func closeDirs(dirs []layerDir) {
	for _, d := range dirs {
		unix.Close(d.fd)
	}
}

// openLayerRoots opens the root directories of a stack, top first.
func openLayerRoots(paths []string) ([]layerDir, error) {
	var out []layerDir
	for i, p := range paths {
		fd, err := unix.Open(p, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			closeDirs(out)
			return nil, fmt.Errorf("open layer %s: %w", p, err)
		}
		out = append(out, layerDir{fd: fd, layer: i})
	}
	return out, nil
}

// writeUnion writes the merged view of dirs as a flat tar: no whiteouts, no
// opaque markers, hard links kept within each layer.
func (t *tarWriter) writeUnion(dirs []layerDir, prefix string) error {
	entries, err := listUnion(dirs)
	if err != nil {
		return err
	}
	for _, e := range entries {
		path := joinRel(prefix, e.name)
		if t.skip != nil && t.skip(path) {
			continue
		}
		if !e.isDir() {
			if err := t.writeEntry(e.layer, e.dirfd, e.name, path, &e.st); err != nil {
				return err
			}
			continue
		}
		if err := t.writeUnionDir(e, path); err != nil {
			return err
		}
	}
	return nil
}

func (t *tarWriter) writeUnionDir(e *unionEntry, path string) error {
	hdr, err := headerFor(e.dirfd, e.name, path, &e.st)
	if err != nil {
		return err
	}
	children, err := openChildren(e)
	if err != nil {
		return err
	}
	defer closeDirs(children)
	if err := addXattrs(children[0].fd, hdr); err != nil {
		return err
	}
	if err := t.writeHeader(hdr); err != nil {
		return err
	}
	return t.writeUnion(children, path)
}
