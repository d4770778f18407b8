package vmfiles

import (
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

	"github.com/meshvm/meshvm/pkg/agenterr"
	"github.com/meshvm/meshvm/pkg/agentstate"
	"github.com/meshvm/meshvm/pkg/fsroot"
	"github.com/meshvm/meshvm/pkg/sysusers"
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
	digests map[string]cachedDigest // path -> digest of a file state
}

// cachedDigest avoids re-hashing 100+ MB binaries on every re-onboarding.
type cachedDigest struct {
	size, mtime int64
	ino         uint64
	sha256      string
}

// NewStore returns a Store.
func NewStore(log *slog.Logger, root *fsroot.Root, users *sysusers.DB, state *agentstate.Store) *Store {
	return &Store{log: log, root: root, users: users, state: state, digests: map[string]cachedDigest{}}
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
// declared digest it converges owner and mode and does not read body.
func (s *Store) Put(h Header, body io.Reader) (Outcome, error) {
	r, err := s.validate(h)
	if err != nil {
		return 0, err
	}
	outcome := Written
	if s.same(r.spec.Path, r.sha256) {
		outcome = Unchanged
		if _, err := s.root.Chown(r.spec.Path, r.uid, r.gid, r.mode, false); err != nil {
			return 0, err
		}
	} else {
		opts := fsroot.WriteOptions{Mode: r.mode, UID: r.uid, GID: r.gid, Size: r.size, SHA256: r.sha256}
		if d := r.spec.ParentDir; d != nil {
			duid, err := s.users.UserID(d.Owner)
			if err != nil {
				return 0, agenterr.Precondition("%s: %v", h.Path, err)
			}
			dgid, err := s.users.GroupID(d.Group)
			if err != nil {
				return 0, agenterr.Precondition("%s: %v", h.Path, err)
			}
			opts.Dir = &fsroot.DirOptions{Mode: d.Mode, UID: duid, GID: dgid}
		}
		res, err := s.root.WriteFile(r.spec.Path, body, opts)
		s.recordDirs(res.CreatedDirs)
		if err != nil {
			return 0, classify(r.spec.Path, err)
		}
		s.remember(r.spec.Path, r.sha256)
	}
	if r.spec.PersistAt != "" {
		if err := s.persist(r); err != nil {
			return 0, err
		}
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

// persist copies a delivered /run file to its reboot-proof place (root only).
func (s *Store) persist(r resolved) error {
	if s.same(r.spec.PersistAt, r.sha256) {
		return nil
	}
	f, err := s.root.Open(r.spec.Path)
	if err != nil {
		return err
	}
	defer f.Close()
	dir := fsroot.DirOptions{Mode: 0o700}
	res, err := s.root.WriteFile(r.spec.PersistAt, f, fsroot.WriteOptions{Mode: 0o600, Size: r.size, SHA256: r.sha256, Dir: &dir})
	s.recordDirs(res.CreatedDirs)
	if err != nil {
		return fmt.Errorf("keep a reboot-proof copy of %s: %w", r.spec.Path, err)
	}
	s.remember(r.spec.PersistAt, r.sha256)
	return nil
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

func classify(p string, err error) error {
	switch {
	case errors.Is(err, fsroot.ErrUnsafePath):
		return agenterr.Denied("%v", err)
	case errors.Is(err, fsroot.ErrSizeMismatch):
		return agenterr.Invalid("%v", err)
	case errors.Is(err, fs.ErrNotExist):
		return agenterr.Precondition("%v: the directory is missing; run Install first", err)
	case strings.Contains(err.Error(), "declared"):
		return agenterr.Invalid("%v", err)
	}
	return fmt.Errorf("deliver %s: %w", p, err)
}

// same reports whether the regular file at p has digest sum.
func (s *Store) same(p, sum string) bool {
	d, err := s.digest(p)
	return err == nil && d == sum
}

// digest hashes p, reusing the last result while size, mtime and inode match.
func (s *Store) digest(p string) (string, error) {
	key, err := s.fileKey(p)
	if err != nil {
		return "", err
	}
	s.mu.Lock()
	c, ok := s.digests[p]
	s.mu.Unlock()
	if ok && c.size == key.size && c.mtime == key.mtime && c.ino == key.ino {
		return c.sha256, nil
	}
	sum, _, err := s.root.Digest(p)
	if err != nil {
		return "", err
	}
	key.sha256 = sum
	s.mu.Lock()
	s.digests[p] = key
	s.mu.Unlock()
	return sum, nil
}

func (s *Store) remember(p, sum string) {
	key, err := s.fileKey(p)
	if err != nil {
		return
	}
	key.sha256 = sum
	s.mu.Lock()
	s.digests[p] = key
	s.mu.Unlock()
}

func (s *Store) fileKey(p string) (cachedDigest, error) {
	f, err := s.root.Open(p)
	if err != nil {
		return cachedDigest{}, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return cachedDigest{}, err
	}
	return cachedDigest{size: st.Size(), mtime: st.ModTime().UnixNano(), ino: inode(st)}, nil
}

// Stat reports the allowlisted paths given, or all of them when none are.
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
				if st.SHA256, err = s.digest(p); err != nil {
					return nil, err
				}
			}
		}
		out = append(out, st)
	}
	return out, nil
}

func inode(fi fs.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Ino
	}
	return 0
}

// SweepInterrupted removes what deliveries cut short by the agent's own
// death left beside the allowlisted files (a write cleans up after itself
// otherwise). The agent runs it once at start.
func (s *Store) SweepInterrupted() {
	for _, spec := range allowlist {
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
}
