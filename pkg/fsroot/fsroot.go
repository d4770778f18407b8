// Package fsroot confines file operations to a directory tree and makes
// writes atomic.
//
// The agent runs as root but writes into directories that the unprivileged
// istio-proxy user owns. A symlink planted there must never redirect a write,
// so every path is walked one component at a time with O_NOFOLLOW. The only
// symlinks followed are trusted ones: owned by root, in a directory that only
// root can write (as the kernel's protected_symlinks rule reasons). That keeps
// system links such as /var/run -> /run and /etc/istio -> /var/lib/istio
// working. The final component is never followed: it is replaced by rename.
package fsroot

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// maxLinks bounds symlink resolution, like the kernel's ELOOP limit.
const maxLinks = 40

// tempMarker names temporary files so a later write can sweep leftovers of an
// interrupted one (e.g. the agent killed mid-transfer).
const tempMarker = ".meshvm-tmp-"

// ErrUnsafePath reports a path that crosses an untrusted symlink or leaves the root.
var ErrUnsafePath = errors.New("unsafe path")

// Root is a directory that stands for "/" of the machine the agent manages.
type Root struct {
	dir string
}

// New returns a Root at dir, which must be an existing directory.
func New(dir string) (*Root, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("root directory %q: %w", dir, err)
	}
	st, err := os.Stat(abs)
	if err != nil {
		return nil, fmt.Errorf("root directory: %w", err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("root directory %s is not a directory", abs)
	}
	return &Root{dir: abs}, nil
}

// Dir is the host directory standing for "/".
func (r *Root) Dir() string { return r.dir }

// HostPath maps an absolute machine path to the host path below the root, for
// tools that take a path (it does not resolve symlinks; use only for display
// and for programs run with the root as their prefix).
func (r *Root) HostPath(p string) string {
	return filepath.Join(r.dir, filepath.FromSlash(path.Clean("/"+p)))
}

// split cleans an absolute machine path into components.
func split(p string) ([]string, error) {
	if !path.IsAbs(p) {
		return nil, fmt.Errorf("%q: %w: want an absolute path", p, ErrUnsafePath)
	}
	for _, c := range strings.Split(p, "/") {
		if c == ".." {
			return nil, fmt.Errorf("%q: %w: \"..\" is not allowed", p, ErrUnsafePath)
		}
	}
	clean := path.Clean(p)
	if clean == "/" {
		return nil, nil
	}
	return strings.Split(strings.TrimPrefix(clean, "/"), "/"), nil
}

func (r *Root) openRoot() (int, error) {
	fd, err := unix.Open(r.dir, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open root %s: %w", r.dir, err)
	}
	return fd, nil
}

// DirOptions says how missing directories are created by OpenDir.
type DirOptions struct {
	Create   bool
	Mode     os.FileMode // permission bits, setgid allowed
	UID, GID int
}

// OpenDir walks to directory p (an absolute machine path) and returns its
// file descriptor, creating missing directories when opts.Create is set.
// created lists the machine paths of directories it created, in order.
func (r *Root) OpenDir(p string, opts DirOptions) (fd int, created []string, err error) {
	comps, err := split(p)
	if err != nil {
		return -1, nil, err
	}
	w := &dirWalk{r: r, p: p, opts: opts}
	if w.fd, err = r.openRoot(); err != nil {
		return -1, nil, err
	}
	for len(comps) > 0 {
		c := comps[0]
		comps = comps[1:]
		if c == "" || c == "." {
			continue
		}
		next, link, err := w.open(c)
		if err == nil && link {
			if comps, err = w.follow(c, comps); err == nil {
				continue
			}
		}
		if err != nil {
			unix.Close(w.fd) // the one cleanup: w.fd is the only descriptor held
			return -1, w.created, err
		}
		unix.Close(w.fd)
		w.fd, w.cur = next, append(w.cur, c)
	}
	return w.fd, w.created, nil
}

// dirWalk is OpenDir's walk: the directory it holds open and the machine
// path to it, which contains no symlinks.
type dirWalk struct {
	r       *Root
	p       string
	opts    DirOptions
	fd      int
	cur     []string
	links   int
	created []string
}

func (w *dirWalk) here(c string) string { return "/" + path.Join(append(w.cur, c)...) }

func openDirAt(dirfd int, name string) (int, error) {
	return unix.Openat(dirfd, name, unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_RDONLY|unix.O_CLOEXEC, 0)
}

// open opens directory c below the one held, creating it when asked; link
// says c is a symlink (or not a directory) for follow to judge.
func (w *dirWalk) open(c string) (next int, link bool, err error) {
	next, err = openDirAt(w.fd, c)
	if errors.Is(err, unix.ENOENT) && w.opts.Create {
		if merr := unix.Mkdirat(w.fd, c, 0o700); merr != nil && !errors.Is(merr, unix.EEXIST) {
			return -1, false, fmt.Errorf("create %s: %w", w.here(c), merr)
		}
		next, err = openDirAt(w.fd, c)
		if err == nil {
			if serr := setOwnerMode(next, w.opts.UID, w.opts.GID, w.opts.Mode); serr != nil {
				unix.Close(next)
				return -1, false, fmt.Errorf("create %s: %w", w.here(c), serr)
			}
			w.created = append(w.created, w.here(c))
		}
	}
	switch {
	case errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR):
		return -1, true, nil
	case errors.Is(err, unix.ENOENT):
		return -1, false, fmt.Errorf("open %s: %w", w.here(c), fs.ErrNotExist)
	case err != nil:
		return -1, false, fmt.Errorf("open %s: %w", w.here(c), err)
	}
	return next, false, nil
}

// follow resolves symlink c, when trusted, against the path walked so far
// and returns the components still to walk, from the root again.
func (w *dirWalk) follow(c string, rest []string) ([]string, error) {
	target, err := trustedLink(w.fd, c)
	if err != nil {
		return nil, fmt.Errorf("%s: %w: %w", w.p, ErrUnsafePath, err)
	}
	if w.links++; w.links > maxLinks {
		return nil, fmt.Errorf("%s: too many symlinks", w.p)
	}
	// cur holds no symlinks, so the target can be joined lexically; the walk
	// then restarts from the root on the resolved path. Like a chroot, ".."
	// at the root stays at the root.
	base := "/" + path.Join(w.cur...)
	if path.IsAbs(target) {
		base = "/"
	}
	resolved := path.Join(append([]string{base, target}, rest...)...)
	fd, err := w.r.openRoot()
	if err != nil {
		return nil, err
	}
	unix.Close(w.fd)
	w.fd, w.cur = fd, w.cur[:0]
	return strings.Split(strings.TrimPrefix(resolved, "/"), "/"), nil
}

// trustedLink returns the target of symlink name in dirfd if the link is
// trusted: owned by root in a directory no one but root can write.
func trustedLink(dirfd int, name string) (string, error) {
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return "", err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFLNK {
		return "", fmt.Errorf("%s is not a directory", name)
	}
	var dst unix.Stat_t
	if err := unix.Fstat(dirfd, &dst); err != nil {
		return "", err
	}
	if st.Uid != 0 || dst.Uid != 0 || dst.Mode&0o022 != 0 {
		return "", fmt.Errorf("%s is a symbolic link that a non-root user could have planted; remove it", name)
	}
	buf := make([]byte, unix.PathMax)
	n, err := unix.Readlinkat(dirfd, name, buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

func setOwnerMode(fd, uid, gid int, mode os.FileMode) error {
	// chown clears setgid, so it goes first.
	if err := unix.Fchown(fd, uid, gid); err != nil {
		return fmt.Errorf("chown: %w", err)
	}
	if err := unix.Fchmod(fd, unixMode(mode)); err != nil {
		return fmt.Errorf("chmod: %w", err)
	}
	return nil
}

// specialBits pairs Go's mode flags with the unix bits they stand for.
var specialBits = []struct {
	flag os.FileMode
	bit  uint32
}{{os.ModeSetuid, unix.S_ISUID}, {os.ModeSetgid, unix.S_ISGID}, {os.ModeSticky, unix.S_ISVTX}}

func unixMode(m os.FileMode) uint32 {
	u := uint32(m.Perm())
	for _, b := range specialBits {
		if m&b.flag != 0 {
			u |= b.bit
		}
	}
	return u
}

// FileMode converts a raw unix mode (e.g. 0o2755) into an os.FileMode.
func FileMode(u uint32) os.FileMode {
	m := os.FileMode(u & 0o777)
	for _, b := range specialBits {
		if u&b.bit != 0 {
			m |= b.flag
		}
	}
	return m
}

// UnixMode converts an os.FileMode into raw unix permission and special bits.
func UnixMode(m os.FileMode) uint32 { return unixMode(m) }

// Info is what Stat reports of a path, without following its last component.
type Info struct {
	Mode     os.FileMode // type and permission bits
	UID, GID int
	Size     int64
}

// Stat reports the file at p without following a final symlink.
func (r *Root) Stat(p string) (Info, error) {
	dirfd, name, err := r.parent(p, DirOptions{})
	if err != nil {
		return Info{}, err
	}
	defer unix.Close(dirfd)
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return Info{}, fmt.Errorf("stat %s: %w", p, fs.ErrNotExist)
		}
		return Info{}, fmt.Errorf("stat %s: %w", p, err)
	}
	return infoFrom(&st), nil
}

func infoFrom(st *unix.Stat_t) Info {
	mode := uint32(st.Mode) // uint16 on darwin
	m := FileMode(mode & 0o7777)
	switch mode & unix.S_IFMT {
	case unix.S_IFDIR:
		m |= os.ModeDir
	case unix.S_IFLNK:
		m |= os.ModeSymlink
	case unix.S_IFREG:
	default:
		m |= os.ModeIrregular
	}
	return Info{Mode: m, UID: int(st.Uid), GID: int(st.Gid), Size: st.Size}
}

func (r *Root) parent(p string, opts DirOptions) (int, string, error) {
	fd, name, _, err := r.parentCreated(p, opts)
	return fd, name, err
}

func (r *Root) parentCreated(p string, opts DirOptions) (int, string, []string, error) {
	comps, err := split(p)
	if err != nil {
		return -1, "", nil, err
	}
	if len(comps) == 0 {
		return -1, "", nil, fmt.Errorf("%q: %w: want a file path", p, ErrUnsafePath)
	}
	dir := "/" + path.Join(comps[:len(comps)-1]...)
	fd, created, err := r.OpenDir(dir, opts)
	if err != nil {
		return -1, "", created, err
	}
	return fd, comps[len(comps)-1], created, nil
}

// CloseFD closes a directory descriptor returned by OpenDir.
func CloseFD(fd int) { unix.Close(fd) }

// Open opens the regular file at p for reading; a final symlink is refused.
func (r *Root) Open(p string) (*os.File, error) {
	dirfd, name, err := r.parent(p, DirOptions{})
	if err != nil {
		return nil, err
	}
	defer unix.Close(dirfd)
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		switch {
		case errors.Is(err, unix.ENOENT):
			return nil, fmt.Errorf("open %s: %w", p, fs.ErrNotExist)
		case errors.Is(err, unix.ELOOP):
			return nil, fmt.Errorf("open %s: %w: it is a symbolic link", p, ErrUnsafePath)
		}
		return nil, fmt.Errorf("open %s: %w", p, err)
	}
	f := os.NewFile(uintptr(fd), r.HostPath(p))
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("open %s: not a regular file", p)
	}
	return f, nil
}

// OpenSingle is Open for a file in a directory another user can write: it
// also refuses a file with more than one name, since a hard link planted
// there can name a file that user may not read (protected_hardlinks is
// not on everywhere), and root would read it for them.
func (r *Root) OpenSingle(p string) (*os.File, error) {
	f, err := r.Open(p)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if n := st.Sys().(*syscall.Stat_t).Nlink; n > 1 {
		f.Close()
		return nil, fmt.Errorf("open %s: %w: the file has %d names (hard links): remove it and let its writer create it again", p, ErrUnsafePath, n)
	}
	return f, nil
}

// ReadFile reads the regular file at p.
func (r *Root) ReadFile(p string) ([]byte, error) {
	f, err := r.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(f)
}

// Digest returns the hex SHA-256 and size of the regular file at p.
func (r *Root) Digest(p string) (string, int64, error) {
	f, err := r.Open(p)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, fmt.Errorf("read %s: %w", p, err)
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// WriteOptions describes the file WriteFile leaves behind.
type WriteOptions struct {
	Mode     os.FileMode
	UID, GID int
	// Size, when >= 0, is the exact number of bytes the reader must yield.
	Size int64
	// SHA256, when set, is the hex digest the content must have.
	SHA256 string
	// Dir is how missing parent directories are created; nil means they must exist.
	Dir *DirOptions
}

// WriteResult says what WriteFile wrote.
type WriteResult struct {
	Size   int64
	SHA256 string
	// CreatedDirs lists the parent directories created, parents first.
	CreatedDirs []string
}

// WriteFile replaces the file at p with the content of src atomically: the
// data goes to a temporary file in the same directory, which is checked
// against the declared size and digest, given its owner and mode, synced and
// renamed over p; then the directory is synced. On any failure p is left as it
// was and the temporary file is removed.
func (r *Root) WriteFile(p string, src io.Reader, opts WriteOptions) (WriteResult, error) {
	dopts := DirOptions{}
	if opts.Dir != nil {
		dopts = *opts.Dir
		dopts.Create = true
	}
	dirfd, name, created, err := r.parentCreated(p, dopts)
	if err != nil {
		return WriteResult{CreatedDirs: created}, err
	}
	defer unix.Close(dirfd)
	sweepTemps(dirfd, name)
	res := WriteResult{CreatedDirs: created}

	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return res, fmt.Errorf("write %s: a directory is in the way", p)
	}

	tmp := "." + name + tempMarker + randomSuffix()
	fd, err := unix.Openat(dirfd, tmp, unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return res, fmt.Errorf("create temporary file for %s: %w", p, err)
	}
	f := os.NewFile(uintptr(fd), tmp)
	committed := false
	defer func() {
		if !committed {
			f.Close()
			unix.Unlinkat(dirfd, tmp, 0)
		}
	}()

	h := sha256.New()
	n, err := copyChecked(&writeBehind{f: f}, src, h, opts.Size)
	if err != nil {
		return res, fmt.Errorf("write %s: %w", p, err)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	if opts.SHA256 != "" && !strings.EqualFold(sum, opts.SHA256) {
		return res, fmt.Errorf("write %s: %w: content has sha256 %s, declared %s: the transfer was corrupted, send it again", p, ErrDigestMismatch, sum, opts.SHA256)
	}
	if err := setOwnerMode(fd, opts.UID, opts.GID, opts.Mode); err != nil {
		return res, fmt.Errorf("write %s: %w", p, err)
	}
	if err := f.Sync(); err != nil {
		return res, fmt.Errorf("sync %s: %w", p, err)
	}
	if err := f.Close(); err != nil {
		return res, fmt.Errorf("close %s: %w", p, err)
	}
	if err := unix.Renameat(dirfd, tmp, dirfd, name); err != nil {
		return res, fmt.Errorf("rename into place %s: %w", p, err)
	}
	committed = true
	if err := unix.Fsync(dirfd); err != nil {
		return res, fmt.Errorf("sync directory of %s: %w", p, err)
	}
	res.Size, res.SHA256 = n, sum
	return res, nil
}

// WriteBytes is WriteFile for content in memory.
func (r *Root) WriteBytes(p string, data []byte, opts WriteOptions) error {
	opts.Size = int64(len(data))
	_, err := r.WriteFile(p, bytes.NewReader(data), opts)
	return err
}

// writeBehind starts write-back of every few MiB while the rest still
// arrives, so the final fsync of a large file waits for little.
type writeBehind struct {
	f        *os.File
	off, beg int64
}

const writeBehindStep = 8 << 20

func (w *writeBehind) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	w.off += int64(n)
	if w.off-w.beg >= writeBehindStep {
		// Only a hint: the fsync before rename is what guarantees durability.
		startWriteBack(w.f, w.beg, w.off-w.beg)
		w.beg = w.off
	}
	return n, err
}

// ErrSizeMismatch reports content longer or shorter than declared.
var ErrSizeMismatch = errors.New("size mismatch")

// ErrDigestMismatch reports content whose SHA-256 is not the declared one.
var ErrDigestMismatch = errors.New("digest mismatch")

// copyChecked copies src to dst, feeding h, and checks the size when size >= 0.
// Hashing runs beside the copy: on a large file the two together would
// otherwise cost as much again as the write.
func copyChecked(dst io.Writer, src io.Reader, h hash.Hash, size int64) (int64, error) {
	bufSize := int64(1 << 20)
	if size >= 0 && size < bufSize {
		bufSize = max(size+1, 512)
	}
	const nbuf = 4
	free := make(chan []byte, nbuf)
	for range nbuf {
		free <- make([]byte, bufSize)
	}
	toHash := make(chan []byte, nbuf)
	hashed := make(chan struct{})
	go func() {
		for b := range toHash {
			h.Write(b)
			free <- b[:cap(b)]
		}
		close(hashed)
	}()
	n, err := copyLoop(dst, src, size, free, toHash)
	close(toHash)
	<-hashed
	if err != nil {
		return n, err
	}
	if size >= 0 && n != size {
		return n, fmt.Errorf("%w: got %d bytes, declared %d", ErrSizeMismatch, n, size)
	}
	return n, nil
}

func copyLoop(dst io.Writer, src io.Reader, size int64, free <-chan []byte, toHash chan<- []byte) (int64, error) {
	var n int64
	for {
		b := <-free
		m, rerr := src.Read(b)
		if m > 0 {
			if size >= 0 && n+int64(m) > size {
				return n + int64(m), fmt.Errorf("%w: more than the %d bytes declared", ErrSizeMismatch, size)
			}
			if _, err := dst.Write(b[:m]); err != nil {
				return n, err
			}
			n += int64(m)
			toHash <- b[:m]
		} else {
			toHash <- b[:0]
		}
		if rerr == io.EOF {
			return n, nil
		}
		if rerr != nil {
			return n, rerr
		}
	}
}

func randomSuffix() string {
	b := make([]byte, 6)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// SweepTemps removes the temporary files an interrupted write of p left
// (the writer killed before it could clean up), and reports how many.
func (r *Root) SweepTemps(p string) (int, error) {
	dirfd, name, err := r.parent(p, DirOptions{})
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	defer unix.Close(dirfd)
	return sweepTemps(dirfd, name), nil
}

// sweepTemps removes temporary files that an interrupted write of name left.
func sweepTemps(dirfd int, name string) int {
	prefix := "." + name + tempMarker
	dfd, err := unix.Openat(dirfd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0
	}
	d := os.NewFile(uintptr(dfd), ".")
	defer d.Close()
	names, _ := d.Readdirnames(-1)
	n := 0
	for _, f := range names {
		if strings.HasPrefix(f, prefix) && unix.Unlinkat(dirfd, f, 0) == nil {
			n++
		}
	}
	return n
}

// Chown sets owner and mode of the existing file or directory at p (not
// following a final symlink); changed reports whether anything differed.
func (r *Root) Chown(p string, uid, gid int, mode os.FileMode, dryRun bool) (changed bool, err error) {
	dirfd, name, err := r.parent(p, DirOptions{})
	if err != nil {
		return false, err
	}
	defer unix.Close(dirfd)
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return false, fmt.Errorf("chown %s: %w", p, fs.ErrNotExist)
		}
		return false, fmt.Errorf("chown %s: %w", p, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return false, fmt.Errorf("stat %s: %w", p, err)
	}
	if int(st.Uid) == uid && int(st.Gid) == gid && uint32(st.Mode)&0o7777 == unixMode(mode) {
		return false, nil
	}
	if dryRun {
		return true, nil
	}
	if err := setOwnerMode(fd, uid, gid, mode); err != nil {
		return false, fmt.Errorf("%s: %w", p, err)
	}
	return true, nil
}

// Remove deletes the file or empty directory at p; a missing p is not an error.
func (r *Root) Remove(p string) error {
	dirfd, name, err := r.parent(p, DirOptions{})
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer unix.Close(dirfd)
	err = unix.Unlinkat(dirfd, name, 0)
	if isDirectory(dirfd, name, err) {
		err = unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR)
	}
	if err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("remove %s: %w", p, err)
	}
	if err == nil {
		unix.Fsync(dirfd)
	}
	return nil
}

// RemoveAll deletes p and everything below it without following symlinks.
func (r *Root) RemoveAll(p string) error {
	dirfd, name, err := r.parent(p, DirOptions{})
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer unix.Close(dirfd)
	return removeAllAt(dirfd, name, p)
}

func removeAllAt(dirfd int, name, display string) error {
	err := unix.Unlinkat(dirfd, name, 0)
	if err == nil || errors.Is(err, unix.ENOENT) {
		return nil
	}
	if !isDirectory(dirfd, name, err) {
		return fmt.Errorf("remove %s: %w", display, err)
	}
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", display, err)
	}
	d := os.NewFile(uintptr(fd), display)
	names, err := d.Readdirnames(-1)
	if err != nil {
		d.Close()
		return fmt.Errorf("list %s: %w", display, err)
	}
	for _, n := range names {
		if err := removeAllAt(fd, n, display+"/"+n); err != nil {
			d.Close()
			return err
		}
	}
	d.Close()
	if err := unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("remove %s: %w", display, err)
	}
	return nil
}

// isDirectory reports whether unlinking name failed because it is a
// directory: Linux says EISDIR, macOS says EPERM (which may also mean
// permission denied, so the entry is looked at).
func isDirectory(dirfd int, name string, unlinkErr error) bool {
	if errors.Is(unlinkErr, unix.EISDIR) {
		return true
	}
	if !errors.Is(unlinkErr, unix.EPERM) {
		return false
	}
	var st unix.Stat_t
	return unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR
}

// Symlink creates (or leaves in place when equal) the symlink p -> target.
// It refuses to replace anything that is not already that symlink.
func (r *Root) Symlink(target, p string, dryRun bool) (changed bool, err error) {
	dirfd, name, err := r.parent(p, DirOptions{})
	if err != nil {
		return false, err
	}
	defer unix.Close(dirfd)
	buf := make([]byte, unix.PathMax)
	n, err := unix.Readlinkat(dirfd, name, buf)
	switch {
	case err == nil && string(buf[:n]) == target:
		return false, nil
	case err == nil:
		return false, fmt.Errorf("%s links to %s, want %s: remove it and retry", p, string(buf[:n]), target)
	case errors.Is(err, unix.EINVAL):
		return false, fmt.Errorf("%s exists and is not a symbolic link to %s: move it away and retry", p, target)
	case !errors.Is(err, unix.ENOENT):
		return false, fmt.Errorf("read link %s: %w", p, err)
	}
	if dryRun {
		return true, nil
	}
	if err := unix.Symlinkat(target, dirfd, name); err != nil {
		return false, fmt.Errorf("create link %s: %w", p, err)
	}
	unix.Fsync(dirfd)
	return true, nil
}

// Readlink returns the target of the symlink at p.
func (r *Root) Readlink(p string) (string, error) {
	dirfd, name, err := r.parent(p, DirOptions{})
	if err != nil {
		return "", err
	}
	defer unix.Close(dirfd)
	buf := make([]byte, unix.PathMax)
	n, err := unix.Readlinkat(dirfd, name, buf)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return "", fmt.Errorf("readlink %s: %w", p, fs.ErrNotExist)
		}
		return "", fmt.Errorf("readlink %s: %w", p, err)
	}
	return string(buf[:n]), nil
}
