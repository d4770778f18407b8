package vmfiles

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/meshvm/meshvm/pkg/agenterr"
	"github.com/meshvm/meshvm/pkg/fsroot"
	"github.com/meshvm/meshvm/vmagent/internal/agentstate"
	"github.com/meshvm/meshvm/vmagent/internal/sysusers"
)

// Header declares a file before its content arrives.
type Header struct {
	Path   string
	Size   uint64
	SHA256 string // hex
	Mode   uint32 // raw unix bits; 0 means the allowlist's default
	Owner  string // empty means the allowlist's default
	Group  string
}

// Stat describes a file on the machine.
type Stat struct {
	Path   string
	Exists bool
	Size   int64
	SHA256 string
	Mode   uint32
	UID    int
	GID    int
	// Owner and Group are names, or the numbers when no name exists.
	Owner, Group string
}

// Outcome says what Put did.
type Outcome int

const (
	// Written: the content was replaced and verified.
	Written Outcome = iota + 1
	// Unchanged: the file already had the digest; owner and mode were converged.
	Unchanged
)

// Store writes allowlisted files below a root.
type Store struct {
	log   *slog.Logger
	root  *fsroot.Root
	users *sysusers.DB
	state *agentstate.Store

	mu      sync.Mutex
	digests map[string]cachedDigest  // path -> digest of a file state
	busy    map[string]chan struct{} // allowlisted path -> closed when its running delivery ends
}

// cachedDigest avoids re-hashing 100+ MB binaries on every re-onboarding.
// ctime is in the key because no caller can set it: the owner of a file can
// put back its size and mtime after changing it, not its ctime.
type cachedDigest struct {
	size, mtime, ctime int64
	ino                uint64
	sha256             string
}

// NewStore returns a Store.
func NewStore(log *slog.Logger, root *fsroot.Root, users *sysusers.DB, state *agentstate.Store) *Store {
	return &Store{log: log, root: root, users: users, state: state, digests: map[string]cachedDigest{}, busy: map[string]chan struct{}{}}
}

// ErrBusy reports a delivery refused because another one of the same path
// is running.
var ErrBusy = errors.New("delivery in progress")

// ErrUnsafeTarget is a delivery refused because the way to its path on the
// VM crosses an untrusted symlink; ErrNoDirectory one whose directory is
// missing (the postinst makes them).
var (
	ErrUnsafeTarget = errors.New("refused to write through an untrusted symlink")
	ErrNoDirectory  = errors.New("the directory is missing; run Install first")
)

// busyWait is how long a delivery waits for another one of the same path
// to end before it gives up: long enough for one just cancelled to clean up.
const busyWait = 2 * time.Second

// claim marks a delivery of the allowlisted path p running, so that two at
// once cannot interleave their writes (nor the sweep remove a live temporary
// file); release ends it.
func (s *Store) claim(p string, wait time.Duration) (release func(), err error) {
	timeout := time.After(wait)
	s.mu.Lock()
	for s.busy[p] != nil {
		running := s.busy[p]
		s.mu.Unlock()
		select {
		case <-running:
		case <-timeout:
			return nil, fmt.Errorf("%w: another delivery of %s is running: retry when it has finished", ErrBusy, p)
		}
		s.mu.Lock()
	}
	done := make(chan struct{})
	s.busy[p] = done
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		delete(s.busy, p)
		s.mu.Unlock()
		close(done)
	}, nil
}

var hexDigest = regexp.MustCompile(`^[0-9a-f]{64}$`)

// resolved is a validated header: the policy and the numeric ids to apply.
type resolved struct {
	spec     Spec
	mode     os.FileMode
	uid, gid int
	size     int64
	sha256   string
}

// validate checks h against the allowlist and policy. Every error names what
// to send instead.
func (s *Store) validate(h Header) (resolved, error) {
	spec, err := allowed(h.Path)
	if err != nil {
		return resolved{}, err
	}
	if h.Size > uint64(spec.MaxSize) {
		return resolved{}, agenterr.Invalid("%s: declared size %d exceeds the %d bytes allowed", h.Path, h.Size, spec.MaxSize)
	}
	sum := strings.ToLower(h.SHA256)
	if !hexDigest.MatchString(sum) {
		return resolved{}, agenterr.Invalid("%s: sha256 %q is not 64 hex digits", h.Path, h.SHA256)
	}
	mode := spec.Mode
	if h.Mode != 0 {
		mode = fsroot.FileMode(h.Mode)
		if h.Mode&^0o7777 != 0 || fsroot.UnixMode(mode)&^fsroot.UnixMode(spec.MaxMode) != 0 {
			return resolved{}, agenterr.Invalid("%s: mode %#o is wider than the %#o allowed", h.Path, h.Mode, fsroot.UnixMode(spec.MaxMode))
		}
	}
	owner, group := spec.Owners[0], spec.Groups[0]
	if h.Owner != "" {
		owner = h.Owner
	}
	if h.Group != "" {
		group = h.Group
	}
	if !slices.Contains(spec.Owners, owner) {
		return resolved{}, agenterr.Invalid("%s: owner %q not allowed (allowed: %s)", h.Path, owner, strings.Join(spec.Owners, ", "))
	}
	if !slices.Contains(spec.Groups, group) {
		return resolved{}, agenterr.Invalid("%s: group %q not allowed (allowed: %s)", h.Path, group, strings.Join(spec.Groups, ", "))
	}
	uid, err := s.users.UserID(owner)
	if err != nil {
		return resolved{}, agenterr.Precondition("%s: %v", h.Path, err)
	}
	gid, err := s.users.GroupID(group)
	if err != nil {
		return resolved{}, agenterr.Precondition("%s: %v", h.Path, err)
	}
	return resolved{spec: spec, mode: mode, uid: uid, gid: gid, size: int64(h.Size), sha256: sum}, nil
}

// allowed returns the policy of p, or an error naming why p is refused.
func allowed(p string) (Spec, error) {
	if p == "" {
		return Spec{}, agenterr.Invalid("file path is empty")
	}
	if !path.IsAbs(p) || path.Clean(p) != p || strings.Contains(p, "..") {
		return Spec{}, agenterr.Invalid("file path %q is not canonical: send the clean absolute path", p)
	}
	spec, ok := Lookup(p)
	if !ok {
		return Spec{}, agenterr.Denied("file path %q is not on the agent's allowlist (allowed: %s)", p, strings.Join(Paths(), ", "))
	}
	return spec, nil
}

// Put writes the file h declares from body. When the file already has the
// declared digest it converges owner and mode and does not read body. A
// delivery of a path another one is writing waits for it up to busyWait,
// then fails with ErrBusy.
func (s *Store) Put(h Header, body io.Reader) (Outcome, error) {
	r, err := s.validate(h)
	if err != nil {
		return 0, err
	}
	release, err := s.claim(r.spec.Path, busyWait)
	if err != nil {
		return 0, err
	}
	defer release()
	outcome, err := s.put(r, body)
	if err != nil {
		return 0, err
	}
	err = s.state.Update(true, func(rec *agentstate.Record) error {
		rec.Files = agentstate.AddOnce(rec.Files, r.spec.Path)
		if r.spec.PersistAt != "" {
			rec.Files = agentstate.AddOnce(rec.Files, r.spec.PersistAt)
		}
		return nil
	})
	return outcome, err
}

func (s *Store) put(r resolved, body io.Reader) (Outcome, error) {
	if f, ok := s.matching(r.spec.Path, r.sha256); ok {
		defer f.Close()
		if err := converge(f, r); err != nil {
			return 0, fmt.Errorf("%s: %w", r.spec.Path, err)
		}
		s.rememberFile(r.spec.Path, f, r.sha256) // chown and chmod changed its ctime
		if r.spec.PersistAt != "" {
			if _, err := f.Seek(0, io.SeekStart); err != nil {
				return 0, err
			}
			kept, err := s.keep(r, f)
			if err != nil {
				return 0, err
			}
			kept.Close()
		}
		return Unchanged, nil
	}
	src := body
	if r.spec.PersistAt != "" {
		// The root-only copy is written first and the delivered file from it:
		// what the proxy user can do to the file in its directory never
		// reaches the copy root-side steps read.
		kept, err := s.keep(r, body)
		if err != nil {
			return 0, err
		}
		defer kept.Close()
		src = kept
	}
	opts := fsroot.WriteOptions{Mode: r.mode, UID: r.uid, GID: r.gid, Size: r.size, SHA256: r.sha256}
	if d := r.spec.ParentDir; d != nil {
		duid, err := s.users.UserID(d.Owner)
		if err != nil {
			return 0, agenterr.Precondition("%s: %v", r.spec.Path, err)
		}
		dgid, err := s.users.GroupID(d.Group)
		if err != nil {
			return 0, agenterr.Precondition("%s: %v", r.spec.Path, err)
		}
		opts.Dir = &fsroot.DirOptions{Mode: d.Mode, UID: duid, GID: dgid}
	}
	res, err := s.root.WriteFile(r.spec.Path, src, opts)
	s.recordDirs(res.CreatedDirs)
	if err != nil {
		return 0, deliveryError(r.spec.Path, err)
	}
	s.remember(r.spec.Path, r.sha256)
	return Written, nil
}

// keep makes sure the root-only copy of a /run or proxy-writable file holds
// the declared content, writing it from src unless it already does, and
// returns it opened for reading.
func (s *Store) keep(r resolved, src io.Reader) (*os.File, error) {
	if f, ok := s.matching(r.spec.PersistAt, r.sha256); ok {
		return f, nil
	}
	dir := fsroot.DirOptions{Mode: 0o700}
	res, err := s.root.WriteFile(r.spec.PersistAt, src, fsroot.WriteOptions{Mode: 0o600, Size: r.size, SHA256: r.sha256, Dir: &dir})
	s.recordDirs(res.CreatedDirs)
	if err != nil {
		return nil, deliveryError(r.spec.Path, fmt.Errorf("keep a root-only copy of %s: %w", r.spec.Path, err))
	}
	s.remember(r.spec.PersistAt, r.sha256)
	return s.root.Open(r.spec.PersistAt)
}

// converge gives the open file f the owner and mode r asks for. It only
// ever runs on a file whose one name is the allowlisted path (see single).
func converge(f *os.File, r resolved) error {
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	uid, gid := owner(fi)
	if uid == r.uid && gid == r.gid && fsroot.UnixMode(fi.Mode()) == fsroot.UnixMode(r.mode) {
		return nil
	}
	// chown clears setgid, so it goes first.
	if err := f.Chown(r.uid, r.gid); err != nil {
		return err
	}
	return f.Chmod(r.mode)
}

// recordDirs remembers directories a delivery created, for Uninstall.
func (s *Store) recordDirs(created []string) {
	if len(created) == 0 {
		return
	}
	err := s.state.Update(true, func(rec *agentstate.Record) error {
		for _, c := range created {
			rec.CreatedDirs = agentstate.AddOnce(rec.CreatedDirs, c)
		}
		return nil
	})
	if err != nil {
		s.log.Error("record created directories", "err", err)
	}
}

// deliveryError says which delivery failed. It gives no class: the
// server's one table (errors.go) maps the sentinels err wraps to codes.
func deliveryError(p string, err error) error {
	switch {
	case errors.Is(err, fsroot.ErrUnsafePath):
		// The path was checked canonical and allowlisted before: what is
		// unsafe is the VM's tree, a symlink where a directory should be.
		return fmt.Errorf("deliver %s: %w: %w", p, ErrUnsafeTarget, err)
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("deliver %s: %w: %w", p, ErrNoDirectory, err)
	}
	return fmt.Errorf("deliver %s: %w", p, err)
}

// errLinked refuses to read or change a file that has other names: a hard
// link planted at an allowlisted path (in a directory istio-proxy can write)
// would otherwise let a delivery chown, chmod or reveal the digest of the
// file it links to, such as /etc/shadow.
var errLinked = errors.New("the file has other names (hard links): it is replaced, never read or changed")

// single opens the regular file at p when its only name is p.
func (s *Store) single(p string) (*os.File, cachedDigest, error) {
	f, err := s.root.Open(p)
	if err != nil {
		return nil, cachedDigest{}, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, cachedDigest{}, err
	}
	if links(fi) != 1 {
		f.Close()
		return nil, cachedDigest{}, fmt.Errorf("%s: %w", p, errLinked)
	}
	return f, keyOf(fi), nil
}

// matching opens p and reports whether it is a file of its own with digest
// sum; then the caller closes f.
func (s *Store) matching(p, sum string) (f *os.File, ok bool) {
	f, key, err := s.single(p)
	if err != nil {
		return nil, false
	}
	if d, err := s.digestOf(p, f, key); err != nil || d != sum {
		f.Close()
		return nil, false
	}
	return f, true
}

// digestOf hashes f (opened at p), reusing the last result while size,
// mtime, ctime and inode match.
func (s *Store) digestOf(p string, f *os.File, key cachedDigest) (string, error) {
	s.mu.Lock()
	c, ok := s.digests[p]
	s.mu.Unlock()
	if ok && c.size == key.size && c.mtime == key.mtime && c.ctime == key.ctime && c.ino == key.ino {
		return c.sha256, nil
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("read %s: %w", p, err)
	}
	key.sha256 = hex.EncodeToString(h.Sum(nil))
	s.mu.Lock()
	s.digests[p] = key
	s.mu.Unlock()
	return key.sha256, nil
}

// remember records the digest of the file just written at p.
func (s *Store) remember(p, sum string) {
	f, _, err := s.single(p)
	if err != nil {
		return
	}
	defer f.Close()
	s.rememberFile(p, f, sum)
}

func (s *Store) rememberFile(p string, f *os.File, sum string) {
	fi, err := f.Stat()
	if err != nil {
		return
	}
	key := keyOf(fi)
	key.sha256 = sum
	s.mu.Lock()
	s.digests[p] = key
	s.mu.Unlock()
}

// Stat reports the allowlisted paths given, or all of them when none are.
// A file with other names is reported present without its digest: the
// caller sends it, and the delivery replaces the name.
func (s *Store) Stat(paths []string) ([]Stat, error) {
	if len(paths) == 0 {
		paths = Paths()
	}
	out := make([]Stat, 0, len(paths))
	for _, p := range paths {
		if _, err := allowed(p); err != nil {
			return nil, err
		}
		st := Stat{Path: p}
		info, err := s.root.Stat(p)
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			return nil, err
		default:
			st.Exists = true
			st.Size, st.Mode, st.UID, st.GID = info.Size, fsroot.UnixMode(info.Mode), info.UID, info.GID
			st.Owner, st.Group = s.users.UserName(info.UID), s.users.GroupName(info.GID)
			if info.Mode.IsRegular() {
				if st.SHA256, err = s.statDigest(p); err != nil {
					return nil, err
				}
			}
		}
		out = append(out, st)
	}
	return out, nil
}

// statDigest is the digest of the file at p, or "" when it has other names
// or was swapped since it was looked at.
func (s *Store) statDigest(p string) (string, error) {
	f, key, err := s.single(p)
	if errors.Is(err, errLinked) || errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	defer f.Close()
	return s.digestOf(p, f, key)
}

// SweepInterrupted removes what deliveries cut short by the agent's own
// death left beside the allowlisted files (a write cleans up after itself
// otherwise). The agent runs it once at start; a path being delivered is
// skipped, so a live temporary file is never taken for a leftover.
func (s *Store) SweepInterrupted() {
	for _, spec := range allowlist {
		release, err := s.claim(spec.Path, 0)
		if err != nil {
			continue
		}
		s.sweep(spec)
		release()
	}
}

// links is the number of names the file has.
func links(fi fs.FileInfo) uint64 { return uint64(fi.Sys().(*syscall.Stat_t).Nlink) }

func owner(fi fs.FileInfo) (uid, gid int) {
	st := fi.Sys().(*syscall.Stat_t)
	return int(st.Uid), int(st.Gid)
}

func keyOf(fi fs.FileInfo) cachedDigest {
	st := fi.Sys().(*syscall.Stat_t)
	return cachedDigest{size: st.Size, mtime: fi.ModTime().UnixNano(), ctime: changeTime(st), ino: st.Ino}
}

func (s *Store) sweep(spec Spec) {
	for _, p := range []string{spec.Path, spec.PersistAt} {
		if p == "" {
			continue
		}
		n, err := s.root.SweepTemps(p)
		if err != nil {
			s.log.Warn("sweep interrupted deliveries", "path", p, "err", err)
		} else if n > 0 {
			s.log.Info("removed the partial file(s) of an interrupted delivery", "path", p, "count", n)
		}
	}
}
