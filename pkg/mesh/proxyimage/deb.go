package proxyimage

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// FromDeb returns the sidecar files of a local istio-sidecar .deb, for a
// VM of arch, cached by the package's digest. The package's Architecture
// must be the VM's: a .deb carries one.
func FromDeb(cacheDir, debPath, arch string) (Sidecar, error) {
	f, err := os.Open(debPath)
	if err != nil {
		return Sidecar{}, fmt.Errorf("istio.sidecarDeb: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return Sidecar{}, err
	}
	sum := hex.EncodeToString(h.Sum(nil))
	platform := "linux/" + arch
	dir := filepath.Join(cacheDir, "deb", "sha256-"+sum)
	s := Sidecar{Dir: dir, Digest: "sha256:" + sum}
	if complete(dir, platform) {
		s.Cached = true
		return s, nil
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return Sidecar{}, err
	}
	debArch, data, err := readDeb(f)
	if err != nil {
		return Sidecar{}, fmt.Errorf("%s: %w: is it a .deb?", debPath, err)
	}
	if debArch != arch {
		return Sidecar{}, fmt.Errorf("%s is for %s, the VM is %s: give the %s package, or leave istio.sidecarDeb empty to pull istio/proxyv2 for each VM's architecture", debPath, debArch, arch, arch)
	}
	if err := extractTar(bytes.NewReader(data), dir, platform, "is it Istio's istio-sidecar package?"); err != nil {
		return Sidecar{}, fmt.Errorf("%s: %w", debPath, err)
	}
	return s, nil
}

// readDeb reads the ar archive a .deb is: the Architecture of its control
// file, and its data.tar, decompressed.
func readDeb(r io.Reader) (arch string, data []byte, err error) {
	br := bufio.NewReader(r)
	magic := make([]byte, 8)
	if _, err := io.ReadFull(br, magic); err != nil || string(magic) != "!<arch>\n" {
		return "", nil, errors.New("no ar archive header")
	}
	for {
		hdr := make([]byte, 60)
		if _, err := io.ReadFull(br, hdr); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return "", nil, fmt.Errorf("ar member header: %w", err)
		}
		name := strings.TrimSuffix(strings.TrimSpace(string(hdr[0:16])), "/")
		size, err := strconv.ParseInt(strings.TrimSpace(string(hdr[48:58])), 10, 64)
		if err != nil || size < 0 {
			return "", nil, fmt.Errorf("ar member %q: bad size", name)
		}
		body := make([]byte, size)
		if _, err := io.ReadFull(br, body); err != nil {
			return "", nil, fmt.Errorf("ar member %q: %w", name, err)
		}
		if size%2 == 1 {
			br.ReadByte() // members are 2-byte aligned
		}
		switch {
		case strings.HasPrefix(name, "control.tar"):
			ctl, err := decompress(name, body)
			if err != nil {
				return "", nil, err
			}
			if arch, err = controlArch(ctl); err != nil {
				return "", nil, err
			}
		case strings.HasPrefix(name, "data.tar"):
			if data, err = decompress(name, body); err != nil {
				return "", nil, err
			}
		}
	}
	if arch == "" || data == nil {
		return "", nil, errors.New("no control file Architecture or no data.tar")
	}
	return arch, data, nil
}

// decompress undoes the compression dpkg names by suffix.
func decompress(name string, b []byte) ([]byte, error) {
	var r io.Reader
	var err error
	switch filepath.Ext(name) {
	case ".tar":
		return b, nil
	case ".gz":
		r, err = gzip.NewReader(bytes.NewReader(b))
	case ".xz":
		r, err = xz.NewReader(bytes.NewReader(b))
	case ".zst":
		var d *zstd.Decoder
		d, err = zstd.NewReader(bytes.NewReader(b))
		if err == nil {
			defer d.Close()
			r = d
		}
	default:
		return nil, fmt.Errorf("%s: compression not known to dpkg", name)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	out, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return out, nil
}

// controlArch is the Architecture field of the control file in a control.tar.
func controlArch(ctl []byte) (string, error) {
	tr := tar.NewReader(bytes.NewReader(ctl))
	for {
		h, err := tr.Next()
		if err != nil {
			return "", fmt.Errorf("control.tar has no control file: %w", err)
		}
		if filepath.Base(h.Name) != "control" {
			continue
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			return "", err
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "Architecture:"); ok {
				return strings.TrimSpace(v), nil
			}
		}
		return "", errors.New("the control file has no Architecture")
	}
}
