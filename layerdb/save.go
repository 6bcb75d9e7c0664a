package layerdb

import (
	"archive/tar"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/klauspost/compress/zstd"
	digest "github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/vbatts/tar-split/tar/asm"
	"github.com/vbatts/tar-split/tar/storage"
	"golang.org/x/sys/unix"
)

// SaveOptions tunes Save.
type SaveOptions struct {
	Progress Progress
}

// savedImage is what Save needs of one image, read under the lock.
type savedImage struct {
	image  *Image
	layers []*Layer // base first
	names  []string // the names asked for, or all of the image's
}

// Save writes images as one tar holding an OCI image layout plus a docker
// manifest.json, the format docker 25+ "docker save" writes, so docker,
// podman and skopeo load it. Layers are stored uncompressed and rebuilt
// byte for byte from the layer directory and its tar-split record, so every
// layer blob's digest is its DiffID. The output appears only when complete.
func Save(root string, refs []string, out string, opts SaveOptions) error {
	images, err := resolveForSave(root, refs)
	if err != nil {
		return err
	}
	dir := filepath.Dir(out)
	f, err := os.CreateTemp(dir, "."+filepath.Base(out)+".tmp-")
	if err != nil {
		return fmt.Errorf("save: %w", err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	if err := writeImageArchive(f, images, opts.Progress); err != nil {
		return fmt.Errorf("save: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("save: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("save: %w", err)
	}
	if err := os.Rename(f.Name(), out); err != nil {
		return fmt.Errorf("save: %w", err)
	}
	return nil
}

func resolveForSave(root string, refs []string) ([]savedImage, error) {
	s, err := Open(root)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	var out []savedImage
	err = s.view(func(txn *badger.Txn) error {
		for _, ref := range refs {
			im, err := findImage(txn, ref)
			if err != nil {
				return err
			}
			si := savedImage{image: im, names: im.Names}
			if n, err := NormalizeName(ref); err == nil && containsString(im.Names, n) {
				si.names = []string{n}
			}
			for _, chain := range im.Layers {
				l := new(Layer)
				if err := getJSON(txn, layerKey(chain), l); err != nil {
					return err
				}
				si.layers = append(si.layers, s.fillLayer(l))
			}
			out = append(out, si)
		}
		return nil
	})
	return out, err
}

// dockerManifest is one entry of docker's manifest.json.
type dockerManifest struct {
	Config   string   `json:"Config"`
	RepoTags []string `json:"RepoTags"`
	Layers   []string `json:"Layers"`
}

func writeImageArchive(w io.Writer, images []savedImage, progress Progress) error {
	tw := tar.NewWriter(w)
	epoch := time.Unix(0, 0)
	writeFile := func(name string, data []byte) error {
		if err := tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o444, Size: int64(len(data)), ModTime: epoch}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	for _, d := range []string{"blobs/", "blobs/sha256/"} {
		if err := tw.WriteHeader(&tar.Header{Name: d, Typeflag: tar.TypeDir, Mode: 0o755, ModTime: epoch}); err != nil {
			return err
		}
	}
	if err := writeFile(v1.ImageLayoutFile, []byte(`{"imageLayoutVersion":"1.0.0"}`)); err != nil {
		return err
	}
	written := map[digest.Digest]bool{}
	index := v1.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageIndex}
	var dockerEntries []dockerManifest
	for _, si := range images {
		manifest := v1.Manifest{
			Versioned: specs.Versioned{SchemaVersion: 2},
			MediaType: v1.MediaTypeImageManifest,
			Config:    v1.Descriptor{MediaType: v1.MediaTypeImageConfig, Digest: si.image.ID, Size: int64(len(si.image.Config))},
			Layers:    []v1.Descriptor{},
		}
		entry := dockerManifest{Config: "blobs/sha256/" + si.image.ID.Encoded(), RepoTags: si.names, Layers: []string{}}
		for _, l := range si.layers {
			manifest.Layers = append(manifest.Layers, v1.Descriptor{MediaType: v1.MediaTypeImageLayer, Digest: l.DiffID, Size: l.TarSize})
			entry.Layers = append(entry.Layers, "blobs/sha256/"+l.DiffID.Encoded())
			if written[l.DiffID] {
				continue
			}
			written[l.DiffID] = true
			if err := writeLayerBlob(tw, l, progress); err != nil {
				return err
			}
		}
		if !written[si.image.ID] {
			written[si.image.ID] = true
			if err := writeFile("blobs/sha256/"+si.image.ID.Encoded(), si.image.Config); err != nil {
				return err
			}
		}
		mb, err := json.Marshal(manifest)
		if err != nil {
			return err
		}
		md := digest.FromBytes(mb)
		if !written[md] {
			written[md] = true
			if err := writeFile("blobs/sha256/"+md.Encoded(), mb); err != nil {
				return err
			}
		}
		index.Manifests = append(index.Manifests, indexEntries(md, int64(len(mb)), si.names)...)
		dockerEntries = append(dockerEntries, entry)
	}
	ib, err := json.Marshal(index)
	if err != nil {
		return err
	}
	if err := writeFile("index.json", ib); err != nil {
		return err
	}
	db, err := json.Marshal(dockerEntries)
	if err != nil {
		return err
	}
	if err := writeFile("manifest.json", db); err != nil {
		return err
	}
	return tw.Close()
}

// indexEntries is one index.json entry per name (one unnamed entry for an
// image without names), annotated the way docker and containerd do.
func indexEntries(md digest.Digest, size int64, names []string) []v1.Descriptor {
	desc := v1.Descriptor{MediaType: v1.MediaTypeImageManifest, Digest: md, Size: size}
	if len(names) == 0 {
		return []v1.Descriptor{desc}
	}
	var out []v1.Descriptor
	for _, n := range names {
		d := desc
		tag := n[strings.LastIndex(n, ":")+1:]
		d.Annotations = map[string]string{"io.containerd.image.name": n, v1.AnnotationRefName: tag}
		out = append(out, d)
	}
	return out
}

// writeLayerBlob writes a layer's rebuilt tar as blobs/sha256/<DiffID> and
// checks that it hashes to the DiffID.
func writeLayerBlob(tw *tar.Writer, l *Layer, progress Progress) error {
	if err := tw.WriteHeader(&tar.Header{Name: "blobs/sha256/" + l.DiffID.Encoded(), Typeflag: tar.TypeReg, Mode: 0o444, Size: l.TarSize, ModTime: time.Unix(0, 0)}); err != nil {
		return err
	}
	if progress != nil {
		progress.Start("layer "+shortID(l.DiffID), l.TarSize)
		defer progress.Finish()
	}
	d := digest.SHA256.Digester()
	if err := LayerTar(l, io.MultiWriter(tw, d.Hash(), progressWriter{progress})); err != nil {
		return err
	}
	if d.Digest() != l.DiffID {
		return fmt.Errorf("layer %s: %w: the rebuilt tar is %s (was the layer directory changed?)", l.ChainID, ErrDigestMismatch, d.Digest())
	}
	return nil
}

// LayerTar writes the layer's change-set tar exactly as it was imported.
func LayerTar(l *Layer, w io.Writer) error {
	dir := filepath.Dir(l.Dir)
	rootFd, err := unix.Open(l.Dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open layer %s: %w", l.ChainID, err)
	}
	defer unix.Close(rootFd)
	ts, err := os.Open(filepath.Join(dir, tarSplitName))
	if err != nil {
		return fmt.Errorf("layer %s: %w", l.ChainID, err)
	}
	defer ts.Close()
	zr, err := zstd.NewReader(ts)
	if err != nil {
		return fmt.Errorf("layer %s tar-split: %w", l.ChainID, err)
	}
	defer zr.Close()
	err = asm.WriteOutputTarStream(layerFileGetter{root: rootFd}, storage.NewJSONUnpacker(zr), w)
	if err != nil {
		return fmt.Errorf("rebuild layer %s: %w", l.ChainID, err)
	}
	return nil
}

// layerFileGetter hands tar-split the data of a file in a layer directory,
// resolving the recorded tar name the same way extraction did.
type layerFileGetter struct{ root int }

func (g layerFileGetter) Get(name string) (io.ReadCloser, error) {
	p, err := cleanEntryPath(name)
	if err != nil {
		return nil, err
	}
	fd, err := unix.Openat2(g.root, p, &unix.OpenHow{Flags: unix.O_RDONLY | unix.O_NOFOLLOW | unix.O_CLOEXEC, Resolve: resolveBeneath})
	if err != nil {
		return nil, fmt.Errorf("open %q: %w", name, err)
	}
	return os.NewFile(uintptr(fd), name), nil
}
