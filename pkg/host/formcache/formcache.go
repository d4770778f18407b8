// Package formcache keeps the compressed forms (pkg/filecodec) of the
// sidecar binaries hostctl delivers, beside its cache of the binaries, by
// the content's SHA-256: ten VMs onboarded at once, or one after another,
// compress each binary once. An entry is written to a temporary file,
// decoded back and checked against the digest, then renamed into place;
// a lock file serializes goroutines and hostctl processes filling the same
// entry, and the first to hold it does the work.
package formcache

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/meshvm/meshvm/pkg/filecodec"
	"github.com/meshvm/meshvm/pkg/host/agentclient"
	"github.com/meshvm/meshvm/pkg/host/filelock"

	"github.com/meshvm/meshvm/pkg/reason"
)

// minSize is the smallest file given a form: below it the saving is
// milliseconds even on a slow link.
const minSize = 4 << 20

// worthwhile is the most a form may weigh, relative to its file, to be kept:
// an incompressible file (or one nearly so) is sent as it is.
const worthwhile = 0.9

// Entry is what the cache knows of one file.
type Entry struct {
	SHA256 string // hex, of the content
	Size   int64
	// Form is the path of the compressed form; empty when the file is too
	// small or does not compress.
	Form string
}

// Cache is a directory of compressed forms.
type Cache struct {
	dir string

	mu sync.Mutex
	// digests keeps the digests of files already hashed by this process,
	// keyed by what changes when a file does.
	digests map[fileKey]string
	enc     *filecodec.Encoder
	// fills counts compressions, for the tests.
	fills atomic.Int32
}

type fileKey struct {
	path        string
	size, mtime int64
	ino         uint64
}

// New returns the cache in dir (created on first use).
func New(dir string) *Cache { return &Cache{dir: dir, digests: map[fileKey]string{}} }

// Get returns the entry of the file at local, compressing it the first time.
func (c *Cache) Get(local string) (Entry, error) {
	sum, size, err := c.digest(local)
	if err != nil {
		return Entry{}, err
	}
	e := Entry{SHA256: sum, Size: size}
	if size < minSize {
		return e, nil
	}
	form := filepath.Join(c.dir, sum+".zst")
	plain := filepath.Join(c.dir, sum+".plain")
	if ok, err := c.filled(form, plain); err != nil || ok {
		return c.entry(e, form, err)
	}
	if err := os.MkdirAll(c.dir, 0o755); err != nil {
		return Entry{}, fmt.Errorf("compressed sidecar cache: %w", err)
	}
	err = filelock.Locked(filepath.Join(c.dir, sum+".lock"), 0o644, func() error {
		if ok, err := c.filled(form, plain); err != nil || ok {
			return err // another one filled it while this one waited
		}
		return c.fill(local, e, form, plain)
	})
	if err != nil {
		return Entry{}, err
	}
	return c.entry(e, form, nil)
}

// entry sets e.Form when the form exists (the file compresses).
func (c *Cache) entry(e Entry, form string, err error) (Entry, error) {
	if err != nil {
		return Entry{}, err
	}
	if _, err := os.Stat(form); err == nil {
		e.Form = form
	}
	return e, nil
}

// filled reports whether the entry is there: a form, or the marker of a
// file that does not compress.
func (c *Cache) filled(form, plain string) (bool, error) {
	for _, p := range []string{form, plain} {
		_, err := os.Stat(p)
		if err == nil {
			return true, nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return false, fmt.Errorf("compressed sidecar cache: %w", err)
		}
	}
	return false, nil
}

// fill compresses local into form, verified, or marks it plain.
func (c *Cache) fill(local string, e Entry, form, plain string) error {
	c.fills.Add(1)
	enc, err := c.encoder()
	if err != nil {
		return err
	}
	src, err := os.Open(local)
	if err != nil {
		return err
	}
	defer src.Close()
	tmp, err := os.CreateTemp(c.dir, "."+e.SHA256+".tmp-")
	if err != nil {
		return fmt.Errorf("compressed sidecar cache: %w", err)
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	size, sum, formSize, err := filecodec.Compress(tmp, src, enc)
	if err != nil {
		return fmt.Errorf("compress %s: %w", local, err)
	}
	if size != e.Size || sum != e.SHA256 {
		return reason.Wrap(fmt.Errorf("compress %s: it changed while being read (now %d bytes, sha256 %s)", local, size, sum), reason.ChangedWhileRead)
	}
	if float64(formSize) > worthwhile*float64(size) {
		return os.WriteFile(plain, nil, 0o644)
	}
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return err
	}
	if err := filecodec.Verify(tmp, e.Size, e.SHA256); err != nil {
		return fmt.Errorf("compress %s: the form does not decode back to it: %w", local, err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("compressed sidecar cache: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("compressed sidecar cache: %w", err)
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), form)
}

func (c *Cache) encoder() (*filecodec.Encoder, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.enc == nil {
		enc, err := filecodec.NewEncoder()
		if err != nil {
			return nil, err
		}
		c.enc = enc
	}
	return c.enc, nil
}

// digest hashes the file at p, once per version of it in this process.
func (c *Cache) digest(p string) (string, int64, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", 0, err
	}
	key := fileKey{path: p, size: fi.Size(), mtime: fi.ModTime().UnixNano(), ino: inode(fi)}
	c.mu.Lock()
	sum, ok := c.digests[key]
	c.mu.Unlock()
	if ok {
		return sum, fi.Size(), nil
	}
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, fmt.Errorf("read %s: %w", p, err)
	}
	if n != fi.Size() {
		return "", 0, reason.Wrap(fmt.Errorf("read %s: it changed while being read", p), reason.ChangedWhileRead)
	}
	sum = hex.EncodeToString(h.Sum(nil))
	c.mu.Lock()
	c.digests[key] = sum
	c.mu.Unlock()
	return sum, n, nil
}

func inode(fi fs.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Ino
	}
	return 0
}

// File is the delivery of the file at local to path on the VM, with its
// digest from the cache and its compressed form when it has one.
func (c *Cache) File(path, local string) (agentclient.File, error) {
	e, err := c.Get(local)
	if err != nil {
		return agentclient.File{}, err
	}
	f := agentclient.LocalFile(path, local)
	f.SHA256, f.Size = e.SHA256, e.Size
	if e.Form != "" {
		f.Form = func() (io.ReadCloser, error) { return os.Open(e.Form) }
	}
	return f, nil
}
