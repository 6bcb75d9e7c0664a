package layerdb

import (
	"archive/tar"
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/gzip"
	digest "github.com/opencontainers/go-digest"
)

// The source fuzz targets write what they are given into a real archive
// file and read it back with the import code (openSource, the tar index,
// the OCI and docker readers, planImage): nothing may panic, and whatever
// is accepted must be an image the store could publish.

// writeArchive writes files (in the given order) as a tar at dir/name.
func writeArchive(t *testing.T, dir, name string, files [][2]string) string {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		hdr := &tar.Header{Name: f[0], Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(f[1]))}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(f[1])); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// readSource classifies and parses an import source the way Import does,
// up to (not including) reading layers, and checks what it accepted.
func readSource(t *testing.T, root, source string) (sourceKind, []sourceImage) {
	t.Helper()
	o, kind, closeSrc, err := openSource(root, source)
	if err != nil {
		t.Logf("openSource: %v", err)
		return kind, nil
	}
	defer closeSrc()
	var images []sourceImage
	switch kind {
	case kindOCILayout:
		images, err = readOCILayout(o)
	case kindDockerArchive:
		images, err = readDockerArchive(o)
	default:
		return kind, nil
	}
	if err != nil {
		t.Logf("read %v: %v", kind, err)
		return kind, nil
	}
	for _, si := range images {
		checkPlan(t, si)
	}
	return kind, images
}

// checkPlan checks that a source image the readers accepted either fails
// planImage with an error or gives a consistent image: an ID that is the
// config's digest, one valid ChainID per layer, chained from the base.
func checkPlan(t *testing.T, si sourceImage) {
	t.Helper()
	im, plans, err := planImage(si)
	if err != nil {
		t.Logf("planImage: %v", err)
		return
	}
	if im.ID != digest.FromBytes(si.config) {
		t.Fatalf("image ID %s is not the config's digest", im.ID)
	}
	if len(plans) != len(si.layers) || len(im.Layers) != len(plans) {
		t.Fatalf("%d plans and %d layers for %d source layers", len(plans), len(im.Layers), len(si.layers))
	}
	var parent digest.Digest
	for i, p := range plans {
		if err := p.chain.Validate(); err != nil || p.chain != im.Layers[i] {
			t.Fatalf("layer %d: chain %q (%v), image says %q", i, p.chain, err, im.Layers[i])
		}
		if p.want.parent != parent || ChainID(parent, p.want.diffID) != p.chain {
			t.Fatalf("layer %d: chain %s does not follow from parent %s and DiffID %s", i, p.chain, p.want.parent, p.want.diffID)
		}
		parent = p.chain
	}
	for _, n := range im.Names {
		if _, err := NormalizeName(n); err != nil {
			t.Fatalf("accepted name %q does not normalize: %v", n, err)
		}
	}
}

// FuzzOCILayout fuzzes an OCI archive's index.json, one manifest and one
// config. So that mutations keep the references intact, "@C" in the
// manifest becomes the config's digest and "@M" in the index the
// manifest's; both blobs are stored under blobs/sha256/.
func FuzzOCILayout(f *testing.F) {
	f.Fuzz(func(t *testing.T, index, manifest, config string) {
		dir := t.TempDir()
		c := digest.FromString(config)
		manifest = strings.ReplaceAll(manifest, "@C", c.String())
		m := digest.FromString(manifest)
		index = strings.ReplaceAll(index, "@M", m.String())
		src := writeArchive(t, dir, "oci.tar", [][2]string{
			{"oci-layout", `{"imageLayoutVersion":"1.0.0"}`},
			{"index.json", index},
			{"blobs/sha256/" + m.Encoded(), manifest},
			{"blobs/sha256/" + c.Encoded(), config},
		})
		kind, images := readSource(t, filepath.Join(dir, "store"), src)
		if kind != kindOCILayout {
			t.Fatalf("an archive with oci-layout and index.json was taken for kind %d", kind)
		}
		for _, si := range images {
			for _, l := range si.layers {
				if !strings.HasPrefix(l.path, "blobs/") || l.blob.Validate() != nil {
					t.Fatalf("accepted layer %q (blob %q) is not a valid blob path", l.path, l.blob)
				}
			}
		}
	})
}

// FuzzDockerManifest fuzzes a docker archive's manifest.json and the config
// it names, stored as cccc….json next to a layer aaaa….tar (names as
// podman and skopeo write them: hex digests).
func FuzzDockerManifest(f *testing.F) {
	configName := strings.Repeat("c", 64) + ".json"
	layerName := strings.Repeat("a", 64) + ".tar"
	f.Fuzz(func(t *testing.T, manifest, config string) {
		dir := t.TempDir()
		src := writeArchive(t, dir, "docker.tar", [][2]string{
			{layerName, string(make([]byte, 1024))},
			{configName, config},
			{"manifest.json", manifest},
		})
		kind, _ := readSource(t, filepath.Join(dir, "store"), src)
		if kind != kindDockerArchive {
			t.Fatalf("an archive with manifest.json was taken for kind %d", kind)
		}
	})
}

// FuzzSniffArchive fuzzes the file an import starts from: openSource must
// classify anything without panicking, leave no work directory behind,
// and tell a docker or OCI archive by its content whether or not it is
// compressed.
func FuzzSniffArchive(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		root := filepath.Join(dir, "store")
		src := filepath.Join(dir, "source")
		if err := os.WriteFile(src, data, 0o644); err != nil {
			t.Fatal(err)
		}
		kind, _ := readSource(t, root, src)
		assertNoWork(t, root)
		if sniffCompression(data) != compressionNone || (kind != kindDockerArchive && kind != kindOCILayout) {
			return
		}
		gz := filepath.Join(dir, "source.gz")
		if err := os.WriteFile(gz, gzipBytes(t, data), 0o644); err != nil {
			t.Fatal(err)
		}
		if gzKind, _ := readSource(t, root, gz); gzKind != kind {
			t.Fatalf("archive of kind %d is kind %d once gzipped", kind, gzKind)
		}
		assertNoWork(t, root)
	})
}

func gzipBytes(t *testing.T, data []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if _, err := zw.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// assertNoWork checks that nothing was left in the store's work directory.
func assertNoWork(t *testing.T, root string) {
	t.Helper()
	if entries, _ := os.ReadDir(filepath.Join(root, tmpDirName)); len(entries) != 0 {
		t.Fatalf("%d work directories left in %s/tmp", len(entries), root)
	}
}
