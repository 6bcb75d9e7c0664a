package layerdb

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	digest "github.com/opencontainers/go-digest"
)

// Key prefixes of the badger schema; the package doc describes each.
const (
	prefixLayer     = "layer/"
	prefixImage     = "image/"
	prefixName      = "name/"
	prefixContainer = "container/"
	prefixCtrName   = "cname/"
)

// Layer is one read-only change-set, stored once however many images use it.
type Layer struct {
	ChainID digest.Digest `json:"chain_id"`
	DiffID  digest.Digest `json:"diff_id"`
	// Parent is the ChainID of the layer below, empty for a base layer.
	Parent digest.Digest `json:"parent,omitempty"`
	// Size is the sum of the regular files' sizes (docker's layer size);
	// TarSize the length of the uncompressed change-set tar.
	Size      int64     `json:"size"`
	TarSize   int64     `json:"tar_size"`
	Files     int64     `json:"files"`
	Created   time.Time `json:"created"`
	CreatedBy string    `json:"created_by,omitempty"`
	Comment   string    `json:"comment,omitempty"`
	// Dir is the layer's content directory (absolute; derived, not stored).
	Dir string `json:"dir,omitempty"`
}

// Image is an OCI image config plus the layers its rootfs names.
type Image struct {
	// ID is the digest of Config, as docker and the OCI spec define it.
	ID digest.Digest `json:"id"`
	// Config holds the OCI image config bytes exactly as imported.
	Config json.RawMessage `json:"config"`
	// Layers are the ChainIDs of the image's layers, base first.
	Layers  []digest.Digest `json:"layers"`
	Names   []string        `json:"names,omitempty"`
	Created time.Time       `json:"created"`
}

// Top is the ChainID of the image's topmost layer, empty for an image with
// no layers.
func (im *Image) Top() digest.Digest {
	if len(im.Layers) == 0 {
		return ""
	}
	return im.Layers[len(im.Layers)-1]
}

// Container is an image plus an init layer and a writable upper layer.
type Container struct {
	ID      string        `json:"id"`
	Name    string        `json:"name"`
	Image   digest.Digest `json:"image"`
	State   string        `json:"state"`
	Created time.Time     `json:"created"`
	// Init, Upper and Work are absolute directories (derived, not stored).
	Init  string `json:"init,omitempty"`
	Upper string `json:"upper,omitempty"`
	Work  string `json:"work,omitempty"`
}

// Container states. The runner sets the others with SetContainerState.
const (
	StateCreated = "created"
	StateRunning = "running"
	StateExited  = "exited"
)

func layerKey(chain digest.Digest) []byte { return []byte(prefixLayer + chain.String()) }
func imageKey(id digest.Digest) []byte    { return []byte(prefixImage + id.String()) }
func nameKey(name string) []byte          { return []byte(prefixName + name) }
func containerKey(id string) []byte       { return []byte(prefixContainer + id) }
func ctrNameKey(name string) []byte       { return []byte(prefixCtrName + name) }

// getJSON reads key into v; it returns ErrNotFound for a missing key.
func getJSON(txn *badger.Txn, key []byte, v any) error {
	item, err := txn.Get(key)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return fmt.Errorf("%s: %w", key, ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("read %s: %w", key, err)
	}
	return item.Value(func(b []byte) error {
		if err := json.Unmarshal(b, v); err != nil {
			return fmt.Errorf("decode %s: %w", key, err)
		}
		return nil
	})
}

func putJSON(txn *badger.Txn, key []byte, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s: %w", key, err)
	}
	if err := txn.Set(key, b); err != nil {
		return fmt.Errorf("write %s: %w", key, err)
	}
	return nil
}

func getString(txn *badger.Txn, key []byte) (string, error) {
	item, err := txn.Get(key)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return "", fmt.Errorf("%s: %w", key, ErrNotFound)
	}
	if err != nil {
		return "", fmt.Errorf("read %s: %w", key, err)
	}
	b, err := item.ValueCopy(nil)
	return string(b), err
}

func exists(txn *badger.Txn, key []byte) (bool, error) {
	_, err := txn.Get(key)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read %s: %w", key, err)
	}
	return true, nil
}

// scanJSON calls fn for every record under prefix, decoded into a fresh T.
func scanJSON[T any](txn *badger.Txn, prefix string, fn func(*T) error) error {
	it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(prefix), PrefetchValues: true, PrefetchSize: 64})
	defer it.Close()
	for it.Rewind(); it.Valid(); it.Next() {
		v := new(T)
		err := it.Item().Value(func(b []byte) error { return json.Unmarshal(b, v) })
		if err != nil {
			return fmt.Errorf("decode %s: %w", it.Item().Key(), err)
		}
		if err := fn(v); err != nil {
			return err
		}
	}
	return nil
}

// update runs fn in one read-write transaction; a conflict or a failed commit
// is returned wrapped, and nothing of fn's writes is kept.
func (s *Store) update(fn func(txn *badger.Txn) error) error {
	if err := s.db.Update(fn); err != nil {
		return err
	}
	return nil
}

func (s *Store) view(fn func(txn *badger.Txn) error) error { return s.db.View(fn) }

func (s *Store) fillLayer(l *Layer) *Layer {
	l.Dir = s.layerDir(l.ChainID.Encoded()) + "/" + diffDirName
	return l
}

func (s *Store) fillContainer(c *Container) *Container {
	d := s.containerDir(c.ID)
	c.Init, c.Upper, c.Work = d+"/init", d+"/upper", d+"/work"
	return c
}

// Layers lists every layer, base layers first, then by creation time.
func (s *Store) Layers() ([]*Layer, error) {
	var out []*Layer
	err := s.view(func(txn *badger.Txn) error {
		return scanJSON(txn, prefixLayer, func(l *Layer) error {
			out = append(out, s.fillLayer(l))
			return nil
		})
	})
	sort.SliceStable(out, func(i, j int) bool { return out[i].Created.Before(out[j].Created) })
	return out, err
}

// Images lists every image, newest first.
func (s *Store) Images() ([]*Image, error) {
	var out []*Image
	err := s.view(func(txn *badger.Txn) error {
		return scanJSON(txn, prefixImage, func(im *Image) error {
			out = append(out, im)
			return nil
		})
	})
	sort.SliceStable(out, func(i, j int) bool { return out[i].Created.After(out[j].Created) })
	return out, err
}

// Containers lists every container, newest first.
func (s *Store) Containers() ([]*Container, error) {
	var out []*Container
	err := s.view(func(txn *badger.Txn) error {
		return scanJSON(txn, prefixContainer, func(c *Container) error {
			out = append(out, s.fillContainer(c))
			return nil
		})
	})
	sort.SliceStable(out, func(i, j int) bool { return out[i].Created.After(out[j].Created) })
	return out, err
}

// Layer returns the layer with a ChainID (or an unambiguous prefix of one).
func (s *Store) Layer(ref string) (*Layer, error) {
	var found *Layer
	err := s.view(func(txn *badger.Txn) error {
		var err error
		found, err = s.findLayer(txn, ref)
		return err
	})
	return found, err
}

func (s *Store) findLayer(txn *badger.Txn, ref string) (*Layer, error) {
	var matches []*Layer
	want := strings.TrimPrefix(ref, "sha256:")
	if len(want) < 4 {
		return nil, fmt.Errorf("layer %q: %w", ref, ErrNotFound)
	}
	err := scanJSON(txn, prefixLayer, func(l *Layer) error {
		if strings.HasPrefix(l.ChainID.Encoded(), want) {
			matches = append(matches, l)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	switch len(matches) {
	case 0:
		return nil, fmt.Errorf("layer %q: %w", ref, ErrNotFound)
	case 1:
		return s.fillLayer(matches[0]), nil
	}
	return nil, fmt.Errorf("layer prefix %q is ambiguous (%d layers)", ref, len(matches))
}

// Image returns the image a name or an ID (or unambiguous ID prefix) names.
func (s *Store) Image(ref string) (*Image, error) {
	var found *Image
	err := s.view(func(txn *badger.Txn) error {
		var err error
		found, err = findImage(txn, ref)
		return err
	})
	return found, err
}

func findImage(txn *badger.Txn, ref string) (*Image, error) {
	for _, name := range nameCandidates(ref) {
		id, err := getString(txn, nameKey(name))
		if err == nil {
			im := new(Image)
			return im, getJSON(txn, imageKey(digest.Digest(id)), im)
		}
		if !errors.Is(err, ErrNotFound) {
			return nil, err
		}
	}
	want := strings.TrimPrefix(ref, "sha256:")
	if len(want) < 4 || strings.ContainsAny(want, ":/") {
		return nil, fmt.Errorf("image %q: %w", ref, ErrNotFound)
	}
	var matches []*Image
	err := scanJSON(txn, prefixImage, func(im *Image) error {
		if strings.HasPrefix(im.ID.Encoded(), want) {
			matches = append(matches, im)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	switch len(matches) {
	case 0:
		return nil, fmt.Errorf("image %q: %w", ref, ErrNotFound)
	case 1:
		return matches[0], nil
	}
	return nil, fmt.Errorf("image ID prefix %q is ambiguous (%d images)", ref, len(matches))
}

// Container returns the container a name or an ID (or ID prefix) names.
func (s *Store) Container(ref string) (*Container, error) {
	var found *Container
	err := s.view(func(txn *badger.Txn) error {
		var err error
		found, err = s.findContainer(txn, ref)
		return err
	})
	return found, err
}

func (s *Store) findContainer(txn *badger.Txn, ref string) (*Container, error) {
	id, err := getString(txn, ctrNameKey(ref))
	if err == nil {
		c := new(Container)
		if err := getJSON(txn, containerKey(id), c); err != nil {
			return nil, err
		}
		return s.fillContainer(c), nil
	}
	if !errors.Is(err, ErrNotFound) {
		return nil, err
	}
	if len(ref) < 4 {
		return nil, fmt.Errorf("container %q: %w", ref, ErrNotFound)
	}
	var matches []*Container
	err = scanJSON(txn, prefixContainer, func(c *Container) error {
		if strings.HasPrefix(c.ID, ref) {
			matches = append(matches, c)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	switch len(matches) {
	case 0:
		return nil, fmt.Errorf("container %q: %w", ref, ErrNotFound)
	case 1:
		return s.fillContainer(matches[0]), nil
	}
	return nil, fmt.Errorf("container ID prefix %q is ambiguous (%d containers)", ref, len(matches))
}

// NormalizeName adds the default tag ":latest" to a name without one. A
// colon after the last slash starts the tag (a registry port is not a tag).
func NormalizeName(name string) (string, error) {
	if name == "" || strings.ContainsAny(name, " \t\n\x00@") {
		return "", fmt.Errorf("invalid image name %q", name)
	}
	slash := strings.LastIndex(name, "/")
	if strings.LastIndex(name, ":") <= slash {
		name += ":latest"
	}
	return name, nil
}

// nameCandidates lists the names under which ref may be stored.
func nameCandidates(ref string) []string {
	n, err := NormalizeName(ref)
	if err != nil || n == ref {
		return []string{ref}
	}
	return []string{ref, n}
}
