package layerdb

import (
	"archive/tar"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path"
	"runtime"
	"strings"

	digest "github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"
)

// opener opens a file of an image source (an OCI layout or an archive) by its
// slash-separated path inside the source.
type opener interface {
	open(name string) (io.ReadCloser, int64, error)
	has(name string) bool
}

// sourceImage is one image found in an import source.
type sourceImage struct {
	config []byte
	layers []sourceLayer
	names  []string
}

type sourceLayer struct {
	path string        // inside the source
	blob digest.Digest // compressed digest, when the source states it
	size int64
}

// dirOpener reads an OCI layout directory, never leaving it.
type dirOpener struct{ fd int }

func (d dirOpener) open(name string) (io.ReadCloser, int64, error) {
	fd, err := unix.Openat2(d.fd, name, &unix.OpenHow{Flags: unix.O_RDONLY | unix.O_CLOEXEC, Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_MAGICLINKS})
	if err != nil {
		return nil, 0, fmt.Errorf("open %s in image layout: %w", name, err)
	}
	f := os.NewFile(uintptr(fd), name)
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("stat %s: %w", name, err)
	}
	return f, st.Size(), nil
}

func (d dirOpener) has(name string) bool {
	var st unix.Stat_t
	return unix.Fstatat(d.fd, name, &st, 0) == nil
}

// tarOpener reads files out of an uncompressed tar archive file by offset,
// so each layer is streamed once and the archive is never unpacked.
type tarOpener struct {
	f       *os.File
	entries map[string]tarSpan
	// foreign: some entry has a name no image archive has (see
	// archiveEntryName), so the tar is a root filesystem.
	foreign bool
}

type tarSpan struct {
	off, size int64
	link      string // a symlink's target, resolved on open
}

func indexTar(f *os.File) (*tarOpener, error) {
	t := &tarOpener{f: f, entries: map[string]tarSpan{}}
	// tar.Reader reads whole blocks without read-ahead and skips file data
	// by seeking f, so after Next the file offset is where the data starts.
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return t, nil
		}
		if err != nil {
			return nil, fmt.Errorf("read archive %s: %w", f.Name(), err)
		}
		name := path.Clean(strings.TrimPrefix(hdr.Name, "./"))
		t.foreign = t.foreign || !archiveEntryName(hdr.Name)
		switch hdr.Typeflag {
		case tar.TypeReg, tar.TypeRegA:
			off, err := f.Seek(0, io.SeekCurrent)
			if err != nil {
				return nil, fmt.Errorf("read archive %s: %w", f.Name(), err)
			}
			t.entries[name] = tarSpan{off: off, size: hdr.Size}
		case tar.TypeSymlink:
			t.entries[name] = tarSpan{link: path.Join(path.Dir(name), hdr.Linkname)}
		case tar.TypeLink:
			t.entries[name] = tarSpan{link: path.Clean(hdr.Linkname)}
		}
	}
}

func (t *tarOpener) lookup(name string) (tarSpan, bool) {
	name = path.Clean(name)
	for range 8 { // bounded: archives use one level of links for shared layers
		e, ok := t.entries[name]
		if !ok || e.link == "" {
			return e, ok
		}
		name = e.link
	}
	return tarSpan{}, false
}

func (t *tarOpener) open(name string) (io.ReadCloser, int64, error) {
	e, ok := t.lookup(name)
	if !ok {
		return nil, 0, fmt.Errorf("%s is not in archive %s: %w", name, t.f.Name(), ErrNotFound)
	}
	return io.NopCloser(io.NewSectionReader(t.f, e.off, e.size)), e.size, nil
}

func (t *tarOpener) has(name string) bool { _, ok := t.lookup(name); return ok }

func readAllFrom(o opener, name string, limit int64) ([]byte, error) {
	r, _, err := o.open(name)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	b, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s is larger than %d bytes", name, limit)
	}
	return b, nil
}

// maxJSON bounds the size of a manifest, index or config we read into memory.
const maxJSON = 16 << 20

func blobPath(d digest.Digest) (string, error) {
	if err := d.Validate(); err != nil {
		return "", fmt.Errorf("blob digest %q: %w", d, err)
	}
	return "blobs/" + d.Algorithm().String() + "/" + d.Encoded(), nil
}

// readVerifiedBlob reads a small blob (manifest, config) and checks its digest.
func readVerifiedBlob(o opener, d digest.Digest) ([]byte, error) {
	p, err := blobPath(d)
	if err != nil {
		return nil, err
	}
	b, err := readAllFrom(o, p, maxJSON)
	if err != nil {
		return nil, err
	}
	if got := d.Algorithm().FromBytes(b); got != d {
		return nil, fmt.Errorf("%w: blob %s has digest %s", ErrDigestMismatch, d, got)
	}
	return b, nil
}

// dockerManifestEntry is one image of a docker-archive's manifest.json.
type dockerManifestEntry struct {
	Config   string
	RepoTags []string
	Layers   []string
}

// readDockerArchive reads the images of a "docker save" style archive: its
// manifest.json names the config and the layer tars of each image.
func readDockerArchive(o opener) ([]sourceImage, error) {
	b, err := readAllFrom(o, "manifest.json", maxJSON)
	if err != nil {
		return nil, err
	}
	var entries []dockerManifestEntry
	if err := json.Unmarshal(b, &entries); err != nil {
		return nil, fmt.Errorf("parse manifest.json: %w", err)
	}
	var out []sourceImage
	for _, e := range entries {
		config, err := readAllFrom(o, e.Config, maxJSON)
		if err != nil {
			return nil, err
		}
		im := sourceImage{config: config, names: e.RepoTags}
		for _, lp := range e.Layers {
			im.layers = append(im.layers, sourceLayer{path: lp, size: -1})
		}
		out = append(out, im)
	}
	return out, nil
}

// readOCILayout reads the images an OCI image layout's index.json points to
// (following nested indexes, preferring this machine's platform).
func readOCILayout(o opener) ([]sourceImage, error) {
	b, err := readAllFrom(o, "index.json", maxJSON)
	if err != nil {
		return nil, err
	}
	var index v1.Index
	if err := json.Unmarshal(b, &index); err != nil {
		return nil, fmt.Errorf("parse index.json: %w", err)
	}
	var out []sourceImage
	for _, desc := range index.Manifests {
		im, err := readOCIDescriptor(o, desc, 0)
		if err != nil {
			return nil, err
		}
		if im != nil {
			out = append(out, *im)
		}
	}
	return out, nil
}

func readOCIDescriptor(o opener, desc v1.Descriptor, depth int) (*sourceImage, error) {
	if depth > 4 {
		return nil, fmt.Errorf("image index nested too deeply")
	}
	b, err := readVerifiedBlob(o, desc.Digest)
	if err != nil {
		return nil, err
	}
	switch desc.MediaType {
	case v1.MediaTypeImageIndex, "application/vnd.docker.distribution.manifest.list.v2+json":
		var idx v1.Index
		if err := json.Unmarshal(b, &idx); err != nil {
			return nil, fmt.Errorf("parse index %s: %w", desc.Digest, err)
		}
		pick, ok := pickPlatform(idx.Manifests)
		if !ok {
			return nil, nil
		}
		im, err := readOCIDescriptor(o, pick, depth+1)
		if im != nil {
			im.names = append(im.names, refNames(desc.Annotations)...)
		}
		return im, err
	}
	var m v1.Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("parse manifest %s: %w", desc.Digest, err)
	}
	config, err := readVerifiedBlob(o, m.Config.Digest)
	if err != nil {
		return nil, err
	}
	im := &sourceImage{config: config, names: refNames(desc.Annotations)}
	for _, l := range m.Layers {
		p, err := blobPath(l.Digest)
		if err != nil {
			return nil, err
		}
		im.layers = append(im.layers, sourceLayer{path: p, blob: l.Digest, size: l.Size})
	}
	return im, nil
}

func pickPlatform(descs []v1.Descriptor) (v1.Descriptor, bool) {
	for _, d := range descs {
		if d.Platform == nil || (d.Platform.OS == "linux" && d.Platform.Architecture == runtime.GOARCH) {
			return d, true
		}
	}
	return v1.Descriptor{}, false
}

// refNames turns an index entry's annotations into image names: the full
// name containerd and docker write, or a ref.name that is a full name.
func refNames(ann map[string]string) []string {
	if n := ann["io.containerd.image.name"]; n != "" {
		return []string{n}
	}
	if n := ann[v1.AnnotationRefName]; strings.ContainsAny(n, ":/") {
		return []string{n}
	}
	return nil
}
