package layerdb

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	digest "github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"

	"github.com/strata-fs/strata/whiteout"
)

// Change is one line of "strata diff": Kind is 'A' (added), 'C' (changed)
// or 'D' (deleted); Path is absolute within the container.
type Change struct {
	Kind byte   `json:"kind"`
	Path string `json:"path"`
}

func (c Change) String() string { return string(c.Kind) + " " + c.Path }

// MarshalJSON writes Kind as a letter.
func (c Change) MarshalJSON() ([]byte, error) {
	return json.Marshal(map[string]string{"kind": string(c.Kind), "path": c.Path})
}

// resolvedContainer is what the file-reading work needs of a container,
// read under the lock.
type resolvedContainer struct {
	c      *Container
	image  *Image
	lowers []string // init first, then the image's layers, top first
}

func resolveContainer(root, ref string) (*resolvedContainer, error) {
	s, err := Open(root)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	rc := &resolvedContainer{}
	err = s.view(func(txn *badger.Txn) error {
		c, err := s.findContainer(txn, ref)
		if err != nil {
			return err
		}
		im := new(Image)
		if err := getJSON(txn, imageKey(c.Image), im); err != nil {
			return err
		}
		rc.c, rc.image = c, im
		rc.lowers = append([]string{c.Init}, s.lowerDirs(im)...)
		return nil
	})
	return rc, err
}

// Diff lists a container's changes against its image with docker's meaning:
// a deleted subtree is one D, the parents of a changed or added path are C,
// everything below an added directory is A, and the init layer's
// placeholders never show. It reads the upper layer directly, so it works
// whether or not the container is mounted.
func Diff(root, ref string) ([]Change, error) {
	rc, err := resolveContainer(root, ref)
	if err != nil {
		return nil, err
	}
	upper, err := unix.Open(rc.c.Upper, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open upper layer: %w", err)
	}
	defer unix.Close(upper)
	lowers, err := openLayerRoots(rc.lowers)
	if err != nil {
		return nil, err
	}
	defer closeDirs(lowers)
	var out []Change
	if _, err := diffDir(upper, lowers, "", false, &out); err != nil {
		return nil, err
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out, nil
}

// diffDir compares upper directory fd with the merged lower directories and
// appends changes. It reports whether anything below was reported.
func diffDir(upper int, lowers []layerDir, prefix string, opaque bool, out *[]Change) (bool, error) {
	below := map[string]*unionEntry{}
	if lowers != nil {
		entries, err := listUnion(lowers)
		if err != nil {
			return false, err
		}
		for _, e := range entries {
			below[e.name] = e
		}
	}
	names, err := sortedNames(upper)
	if err != nil {
		return false, err
	}
	reported := false
	seen := map[string]bool{}
	add := func(kind byte, p string) {
		*out = append(*out, Change{Kind: kind, Path: "/" + p})
		reported = true
	}
	for _, name := range names {
		if whiteout.IsOCIOpaque(name) {
			opaque = true
			continue
		}
		if target, ok := whiteout.OCITarget(name); ok {
			seen[target] = true
			if below[target] != nil {
				add('D', joinRel(prefix, target))
			}
			continue
		}
		seen[name] = true
		path := joinRel(prefix, name)
		var st unix.Stat_t
		if err := unix.Fstatat(upper, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return false, fmt.Errorf("stat %q: %w", path, err)
		}
		lower := below[name]
		if whiteout.IsWhiteout(upper, name, &st) {
			if lower != nil {
				add('D', path)
			}
			continue
		}
		if st.Mode&unix.S_IFMT != unix.S_IFDIR {
			if isInitPlaceholder(path) {
				continue
			}
			add(addedOrChanged(lower), path)
			continue
		}
		changed, err := diffSubdir(upper, name, path, &st, lower, out)
		if err != nil {
			return false, err
		}
		reported = reported || changed
	}
	if opaque {
		for name := range below {
			if !seen[name] {
				add('D', joinRel(prefix, name))
			}
		}
	}
	return reported, nil
}

func addedOrChanged(lower *unionEntry) byte {
	if lower == nil {
		return 'A'
	}
	return 'C'
}

// diffSubdir handles a directory of the upper layer: added with all its
// contents, or changed if anything below it or its own metadata changed.
func diffSubdir(upper int, name, path string, st *unix.Stat_t, lower *unionEntry, out *[]Change) (bool, error) {
	fd, err := openDirAt(upper, name)
	if err != nil {
		return false, fmt.Errorf("open %q: %w", path, err)
	}
	defer unix.Close(fd)
	var lowerDirs []layerDir
	if lower != nil && lower.isDir() {
		lowerDirs, err = openChildren(lower)
		if err != nil {
			return false, err
		}
		defer closeDirs(lowerDirs)
	}
	at := len(*out)
	*out = append(*out, Change{}) // the directory's own line, decided below
	below, err := diffDir(fd, lowerDirs, path, whiteout.IsOpaque(fd), out)
	if err != nil {
		return false, err
	}
	switch {
	case lower == nil || !lower.isDir():
		(*out)[at] = Change{Kind: addedOrChanged(lower), Path: "/" + path}
	case below || metadataDiffers(st, &lower.st):
		(*out)[at] = Change{Kind: 'C', Path: "/" + path}
	default:
		*out = append((*out)[:at], (*out)[at+1:]...)
		return false, nil
	}
	return true, nil
}

func metadataDiffers(a, b *unix.Stat_t) bool {
	return a.Mode != b.Mode || a.Uid != b.Uid || a.Gid != b.Gid
}

// CommitOptions tunes Commit.
type CommitOptions struct {
	Message, Author string
	Progress        Progress
}

// commitAttempts bounds the retries of a commit whose container keeps
// changing while its upper layer is read.
const commitAttempts = 3

// Commit turns a container's writable layer into a new read-only layer and
// a new image named name (NAME[:TAG]; empty for an unnamed image). The upper
// layer is read as an OCI change-set; see "Consistent commit" in the package
// doc for how a commit of a mounted, busy container stays consistent. An
// empty change adds an empty_layer history entry and no layer.
func Commit(root, ref, name string, opts CommitOptions) (*Image, error) {
	if name != "" {
		n, err := NormalizeName(name)
		if err != nil {
			return nil, err
		}
		name = n
	}
	rc, err := resolveContainer(root, ref)
	if err != nil {
		return nil, err
	}
	var p *pendingLayer
	var entries int
	for attempt := 1; ; attempt++ {
		p, entries, err = snapshotUpper(root, rc, opts)
		if err == nil || !errors.Is(err, errTreeChanged) || attempt == commitAttempts {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("commit %s: %w", rc.c.Name, err)
	}
	var pending []*pendingLayer
	if entries > 0 {
		pending = append(pending, p)
	} else {
		p.tmp.remove()
	}
	defer func() { discardPending(pending) }()
	im, err := committedImage(rc.image, pending, opts)
	if err != nil {
		return nil, err
	}
	if name != "" {
		im.Names = []string{name}
	}
	if err := publish(root, pending, []*Image{im}); err != nil {
		return nil, err
	}
	pending = nil
	return im, nil
}

// snapshotUpper reads the upper layer as a change-set into a pending layer
// and checks that nothing changed while it was read.
func snapshotUpper(root string, rc *resolvedContainer, opts CommitOptions) (*pendingLayer, int, error) {
	upper, err := unix.Open(rc.c.Upper, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, 0, fmt.Errorf("open upper layer: %w", err)
	}
	defer unix.Close(upper)
	var rootSt unix.Stat_t
	if err := unix.Fstat(upper, &rootSt); err != nil {
		return nil, 0, err
	}
	pr, pw := io.Pipe()
	cw := &countingWriter{w: pw}
	t := newTarWriter(cw, nil)
	t.stamps = map[string]stamp{".": stampOf(&rootSt)}
	t.skip = isInitPlaceholder
	writeDone := make(chan error, 1)
	go func() {
		err := t.writeChangeSet(upper, "")
		if err == nil {
			err = t.close()
		}
		pw.CloseWithError(err)
		writeDone <- err
	}()
	p, ierr := ingestLayer(root, pr, layerExpect{parent: rc.image.Top(), createdBy: commitCreatedBy(opts), comment: opts.Message}, opts.Progress)
	pr.CloseWithError(errors.New("ingest stopped"))
	werr := <-writeDone
	if werr == nil {
		werr = restamp(upper, t.stamps)
	}
	if werr != nil || ierr != nil {
		if p != nil {
			p.tmp.remove()
		}
		if werr != nil {
			return nil, 0, werr
		}
		return nil, 0, ierr
	}
	return p, len(t.stamps) - 1, nil
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.n += int64(n)
	return n, err
}

func commitCreatedBy(opts CommitOptions) string {
	return "strata commit"
}

// committedImage derives the new image's config from the container's image:
// a history entry for the commit and, unless the change was empty, the new
// layer's DiffID.
func committedImage(base *Image, pending []*pendingLayer, opts CommitOptions) (*Image, error) {
	var cfg v1.Image
	if err := json.Unmarshal(base.Config, &cfg); err != nil {
		return nil, fmt.Errorf("image %s config: %w", base.ID, err)
	}
	now := time.Now().UTC()
	cfg.Created = &now
	if opts.Author != "" {
		cfg.Author = opts.Author
	}
	h := v1.History{Created: &now, CreatedBy: commitCreatedBy(opts), Author: opts.Author, Comment: opts.Message, EmptyLayer: len(pending) == 0}
	cfg.History = append(cfg.History, h)
	layers := append([]digest.Digest(nil), base.Layers...)
	if len(pending) > 0 {
		cfg.RootFS.DiffIDs = append(cfg.RootFS.DiffIDs, pending[0].layer.DiffID)
		layers = append(layers, pending[0].layer.ChainID)
	}
	b, err := json.Marshal(cfg)
	if err != nil {
		return nil, fmt.Errorf("encode image config: %w", err)
	}
	return &Image{ID: digest.FromBytes(b), Config: b, Layers: layers, Created: now}, nil
}

// ExportOptions tunes Export.
type ExportOptions struct {
	Progress Progress
}

// Export writes the merged view of a container (upper, init and image
// layers) or of an image as one flat tar: no whiteouts, no opaque markers.
// It reads the layer directories directly, so no mount is needed. out "-"
// is standard output; a file appears only when complete.
func Export(root, ref, out string, opts ExportOptions) error {
	dirs, err := exportDirs(root, ref)
	if err != nil {
		return err
	}
	if out == "-" {
		return writeExport(os.Stdout, dirs, opts)
	}
	f, err := os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".tmp-")
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	if err := writeExport(f, dirs, opts); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	return os.Rename(f.Name(), out)
}

func exportDirs(root, ref string) ([]string, error) {
	s, err := Open(root)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	spec, err := s.MountSpec(ref)
	if err != nil {
		return nil, err
	}
	if spec.Upper != "" {
		return append([]string{spec.Upper}, spec.Lowers...), nil
	}
	return spec.Lowers, nil
}

func writeExport(w io.Writer, paths []string, opts ExportOptions) error {
	dirs, err := openLayerRoots(paths)
	if err != nil {
		return err
	}
	defer closeDirs(dirs)
	if opts.Progress != nil {
		opts.Progress.Start("export", -1)
		defer opts.Progress.Finish()
	}
	t := newTarWriter(w, opts.Progress)
	if err := t.writeUnion(dirs, ""); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	if err := t.close(); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	return nil
}
