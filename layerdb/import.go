package layerdb

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	digest "github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"
)

// ImportOptions tunes Import.
type ImportOptions struct {
	// Name (NAME[:TAG]) is given to the imported image, replacing the names
	// the source carries. With several images in the source it names the
	// first.
	Name     string
	Progress Progress
}

// Import reads an image source into the store at root and returns the
// images it holds. SOURCE is an OCI image layout directory, a docker-archive
// or oci-archive tar, or a root filesystem tar (plain, gzip, zstd) or
// directory, which becomes a one-layer image.
//
// The store is locked only twice, briefly: to learn which layers are present
// and to publish. Layer data is extracted in between without the lock.
func Import(root, source string, opts ImportOptions) ([]*Image, error) {
	o, kind, closeSrc, err := openSource(root, source)
	if err != nil {
		return nil, err
	}
	defer closeSrc()
	var srcImages []sourceImage
	switch kind {
	case kindOCILayout:
		srcImages, err = readOCILayout(o)
	case kindDockerArchive:
		srcImages, err = readDockerArchive(o)
	default:
		return importRootfs(root, source, kind, o, opts)
	}
	if err != nil {
		return nil, fmt.Errorf("import %s: %w", source, err)
	}
	if len(srcImages) == 0 {
		return nil, fmt.Errorf("import %s: no image for linux/%s in it", source, runtime.GOARCH)
	}
	if opts.Name != "" {
		n, err := NormalizeName(opts.Name)
		if err != nil {
			return nil, err
		}
		srcImages[0].names = []string{n}
	}
	present, err := presentLayers(root)
	if err != nil {
		return nil, err
	}
	var pending []*pendingLayer
	defer func() { discardPending(pending) }()
	var images []*Image
	for _, si := range srcImages {
		im, newLayers, err := ingestImage(root, o, si, present, opts.Progress)
		pending = append(pending, newLayers...)
		if err != nil {
			return nil, fmt.Errorf("import %s: %w", source, err)
		}
		images = append(images, im)
	}
	if err := publish(root, pending, images); err != nil {
		return nil, err
	}
	pending = nil
	return images, nil
}

// presentLayers reads the set of ChainIDs in the store, so import can skip
// layers it already has.
func presentLayers(root string) (map[digest.Digest]bool, error) {
	s, err := Open(root)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	present := map[digest.Digest]bool{}
	layers, err := s.Layers()
	for _, l := range layers {
		present[l.ChainID] = true
	}
	return present, err
}

// layerPlan is one layer of a source image: where its blob is in the
// source and what it must turn out to be.
type layerPlan struct {
	chain digest.Digest
	path  string
	want  layerExpect
}

// planImage reads a source image's config and checks it against the
// manifest before any layer is read: the image record to publish and the
// layers it is made of, base first.
func planImage(si sourceImage) (*Image, []layerPlan, error) {
	var cfg v1.Image
	if err := json.Unmarshal(si.config, &cfg); err != nil {
		return nil, nil, fmt.Errorf("parse image config: %w", err)
	}
	if len(cfg.RootFS.DiffIDs) != len(si.layers) {
		return nil, nil, fmt.Errorf("image config lists %d layers, manifest %d", len(cfg.RootFS.DiffIDs), len(si.layers))
	}
	names := make([]string, len(si.names))
	for i, n := range si.names {
		norm, err := NormalizeName(n)
		if err != nil {
			return nil, nil, err
		}
		names[i] = norm
	}
	im := &Image{ID: digest.FromBytes(si.config), Config: si.config, Names: names, Created: time.Now().UTC()}
	if cfg.Created != nil {
		im.Created = cfg.Created.UTC()
	}
	history := layerHistory(cfg)
	plans := make([]layerPlan, 0, len(si.layers))
	var parent digest.Digest
	for i, diffID := range cfg.RootFS.DiffIDs {
		if err := diffID.Validate(); err != nil {
			return nil, nil, fmt.Errorf("layer %d DiffID: %w", i, err)
		}
		want := layerExpect{parent: parent, diffID: diffID, blob: si.layers[i].blob, size: si.layers[i].size}
		if i < len(history) {
			want.createdBy, want.comment = history[i].CreatedBy, history[i].Comment
		}
		chain := ChainID(parent, diffID)
		plans = append(plans, layerPlan{chain: chain, path: si.layers[i].path, want: want})
		im.Layers = append(im.Layers, chain)
		parent = chain
	}
	return im, plans, nil
}

// ingestImage extracts the layers of one source image that the store lacks.
// present grows by the layers it extracted.
func ingestImage(root string, o opener, si sourceImage, present map[digest.Digest]bool, progress Progress) (*Image, []*pendingLayer, error) {
	im, plans, err := planImage(si)
	if err != nil {
		return nil, nil, err
	}
	var pending []*pendingLayer
	for i, lp := range plans {
		if present[lp.chain] {
			continue
		}
		p, err := ingestFromSource(root, o, lp.path, lp.want, progress)
		if err != nil {
			return nil, pending, fmt.Errorf("layer %d (%s): %w", i, lp.path, err)
		}
		pending = append(pending, p)
		present[lp.chain] = true
	}
	return im, pending, nil
}

func ingestFromSource(root string, o opener, path string, want layerExpect, progress Progress) (*pendingLayer, error) {
	r, size, err := o.open(path)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	if want.size < 0 {
		want.size = size
	}
	return ingestLayer(root, r, want, progress)
}

// layerHistory returns the history entries that made layers, in layer order.
func layerHistory(cfg v1.Image) []v1.History {
	var out []v1.History
	for _, h := range cfg.History {
		if !h.EmptyLayer {
			out = append(out, h)
		}
	}
	return out
}

// importRootfs imports a root filesystem tar or directory as a one-layer
// image with a config strata writes.
func importRootfs(root, source string, kind sourceKind, o opener, opts ImportOptions) ([]*Image, error) {
	var r io.Reader
	var size int64 = -1
	if kind == kindRootfsDir {
		pr, pw := io.Pipe()
		fd := o.(dirOpener).fd
		go func() {
			t := newTarWriter(pw, nil)
			err := t.writeChangeSet(fd, "")
			if err == nil {
				err = t.close()
			}
			pw.CloseWithError(err)
		}()
		defer pr.Close()
		r = pr
	} else {
		f, err := os.Open(source)
		if err != nil {
			return nil, fmt.Errorf("open %s: %w", source, err)
		}
		defer f.Close()
		if st, err := f.Stat(); err == nil {
			size = st.Size()
		}
		r = f
	}
	createdBy := "strata import " + filepath.Base(source)
	p, err := ingestLayer(root, r, layerExpect{size: size, createdBy: createdBy}, opts.Progress)
	if err != nil {
		return nil, fmt.Errorf("import %s: %w", source, err)
	}
	pending := []*pendingLayer{p}
	defer func() { discardPending(pending) }()
	im, err := rootfsImage(p.layer, createdBy)
	if err != nil {
		return nil, err
	}
	if opts.Name != "" {
		n, err := NormalizeName(opts.Name)
		if err != nil {
			return nil, err
		}
		im.Names = []string{n}
	}
	if err := publish(root, pending, []*Image{im}); err != nil {
		return nil, err
	}
	pending = nil
	return []*Image{im}, nil
}

func rootfsImage(l Layer, createdBy string) (*Image, error) {
	now := time.Now().UTC()
	cfg := v1.Image{
		Created:  &now,
		Platform: v1.Platform{Architecture: runtime.GOARCH, OS: "linux"},
		Config: v1.ImageConfig{
			Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
			Cmd: []string{"/bin/sh"},
		},
		RootFS:  v1.RootFS{Type: "layers", DiffIDs: []digest.Digest{l.DiffID}},
		History: []v1.History{{Created: &now, CreatedBy: createdBy}},
	}
	b, err := json.Marshal(cfg)
	if err != nil {
		return nil, fmt.Errorf("encode image config: %w", err)
	}
	return &Image{ID: digest.FromBytes(b), Config: b, Layers: []digest.Digest{l.ChainID}, Created: now}, nil
}

func discardPending(pending []*pendingLayer) {
	for _, p := range pending {
		if !p.published { // a published one was trashed by publish itself
			p.tmp.remove()
		}
	}
}

// publish makes extracted layers and new images visible in one transaction,
// under the store lock: each layer's work directory is renamed into
// layers/<chain-hex> and its record written; a layer that another command
// published meanwhile is dropped. A crash between rename and commit leaves a
// directory without a record, which the next Open moves to the trash.
func publish(root string, pending []*pendingLayer, images []*Image) error {
	s, err := Open(root)
	if err != nil {
		return err
	}
	defer s.Close()
	var renamed []string
	err = s.update(func(txn *badger.Txn) error {
		for _, p := range pending {
			dir, err := s.publishLayer(txn, p)
			if err != nil {
				return err
			}
			if dir != "" {
				renamed = append(renamed, dir)
			}
		}
		for _, im := range images {
			if err := putImage(txn, im); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		for _, d := range renamed {
			s.trash(d)
		}
		return fmt.Errorf("publish: %w", err)
	}
	for _, p := range pending {
		if p.published {
			p.tmp.release()
		}
	}
	return nil
}

// publishLayer renames a pending layer into place and writes its record; it
// returns the new directory, or "" when the layer was already there.
func (s *Store) publishLayer(txn *badger.Txn, p *pendingLayer) (string, error) {
	have, err := exists(txn, layerKey(p.layer.ChainID))
	if err != nil {
		return "", err
	}
	if p.layer.Parent != "" {
		ok, err := exists(txn, layerKey(p.layer.Parent))
		if err != nil {
			return "", err
		}
		if !ok {
			return "", fmt.Errorf("parent layer %s was removed meanwhile; import again", p.layer.Parent)
		}
	}
	if have {
		s.trashs = append(s.trashs, p.tmp) // Close deletes the duplicate
		return "", nil
	}
	dir := s.layerDir(p.layer.ChainID.Encoded())
	if err := syncDir(p.tmp.path); err != nil {
		return "", err
	}
	if err := os.Rename(p.tmp.path, dir); err != nil {
		return "", fmt.Errorf("publish layer %s: %w", p.layer.ChainID, err)
	}
	p.tmp.path, p.published = dir, true
	return dir, putJSON(txn, layerKey(p.layer.ChainID), &p.layer)
}

// putImage writes an image record (merging names with an existing record of
// the same ID) and points its names at it.
func putImage(txn *badger.Txn, im *Image) error {
	for _, chain := range im.Layers {
		ok, err := exists(txn, layerKey(chain))
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("image %s: layer %s is missing (removed meanwhile?)", im.ID, chain)
		}
	}
	var old Image
	err := getJSON(txn, imageKey(im.ID), &old)
	if err == nil {
		im.Created = old.Created
		im.Names = mergeNames(old.Names, im.Names)
	} else if !errors.Is(err, ErrNotFound) {
		return err
	}
	for _, n := range im.Names {
		if err := moveName(txn, n, im.ID); err != nil {
			return err
		}
	}
	return putJSON(txn, imageKey(im.ID), im)
}

// moveName points name at image id, taking it from the image that had it.
func moveName(txn *badger.Txn, name string, id digest.Digest) error {
	prev, err := getString(txn, nameKey(name))
	if err != nil && !errors.Is(err, ErrNotFound) {
		return err
	}
	if err == nil && prev != id.String() {
		var other Image
		if err := getJSON(txn, imageKey(digest.Digest(prev)), &other); err == nil {
			other.Names = removeName(other.Names, name)
			if err := putJSON(txn, imageKey(other.ID), &other); err != nil {
				return err
			}
		}
	}
	if err := txn.Set(nameKey(name), []byte(id.String())); err != nil {
		return fmt.Errorf("write name %s: %w", name, err)
	}
	return nil
}

func mergeNames(a, b []string) []string {
	out := append([]string(nil), a...)
	for _, n := range b {
		if !containsString(out, n) {
			out = append(out, n)
		}
	}
	return out
}

func removeName(names []string, name string) []string {
	var out []string
	for _, n := range names {
		if n != name {
			out = append(out, n)
		}
	}
	return out
}

func containsString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// syncDir flushes a freshly written tree's directory entries so the rename
// that publishes it cannot be persisted before its contents.
func syncDir(dir string) error {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	defer unix.Close(fd)
	if err := unix.Syncfs(fd); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}
