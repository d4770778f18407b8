// Package agentstate remembers what vmagent changed on the machine, so that
// Uninstall reverts exactly that and nothing the machine had before.
package agentstate

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/meshvm/meshvm/pkg/fsroot"
	"github.com/meshvm/meshvm/vmagent/internal/hostsfile"
)

// Path is where the record lives on the machine.
const Path = "/var/lib/meshvm/state.json"

// Prior is the owner and mode a path had before the agent changed them.
type Prior struct {
	UID  int    `json:"uid"`
	GID  int    `json:"gid"`
	Mode uint32 `json:"mode"`
}

// Record is the persisted list of changes. Version guards future migrations.
type Record struct {
	Version      int              `json:"version"`
	CreatedGroup bool             `json:"createdGroup,omitempty"`
	CreatedUser  bool             `json:"createdUser,omitempty"`
	CreatedLinks []string         `json:"createdLinks,omitempty"`
	CreatedDirs  []string         `json:"createdDirs,omitempty"`
	Chowned      map[string]Prior `json:"chowned,omitempty"`
	Files        []string         `json:"files,omitempty"`
	// Hosts is the /etc/hosts block Install wrote; the sidecar's start puts
	// it back when something (cloud-init) rewrote the file.
	Hosts []hostsfile.Entry `json:"hosts,omitempty"`
}

// maxSize bounds the record's read: it lists paths, not content.
const maxSize = 16 << 20

// Remove deletes the record, once everything it lists has been reverted.
func (s *Store) Remove() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.root.Remove(Path)
}

// Store loads and saves the record atomically; it is safe for concurrent use.
type Store struct {
	mu   sync.Mutex
	root *fsroot.Root
}

// New returns a Store below root.
func New(root *fsroot.Root) *Store { return &Store{root: root} }

// Update loads the record, lets fn change it and saves it when fn returns nil.
// A dry run passes save=false to see the record without writing it.
func (s *Store) Update(save bool, fn func(*Record) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	rec, err := s.load()
	if err != nil {
		return err
	}
	before, _ := json.Marshal(rec)
	if err := fn(&rec); err != nil {
		return err
	}
	after, _ := json.Marshal(rec)
	if !save || string(before) == string(after) {
		return nil
	}
	return s.save(rec)
}

// Load returns the current record.
func (s *Store) Load() (Record, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.load()
}

func (s *Store) load() (Record, error) {
	// Root acts on the record (removes what it lists): only root may write it.
	data, err := s.root.ReadTrusted(Path, maxSize)
	if errors.Is(err, fs.ErrNotExist) {
		return Record{Version: 1}, nil
	}
	if err != nil {
		return Record{}, fmt.Errorf("read agent state: %w", err)
	}
	var rec Record
	if err := json.Unmarshal(data, &rec); err != nil {
		return Record{}, fmt.Errorf("agent state %s is corrupt (%v): move it away; Uninstall will then only revert what it can detect", Path, err)
	}
	if rec.Version != 1 {
		return Record{}, fmt.Errorf("agent state %s has version %d, this agent knows 1: upgrade vmagent", Path, rec.Version)
	}
	return rec, nil
}

func (s *Store) save(rec Record) error {
	data, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return err
	}
	// The state directory is itself something Uninstall must remove.
	fd, created, err := s.root.OpenDir(path.Dir(Path), fsroot.DirOptions{Create: true, Mode: 0o700})
	if err != nil {
		return fmt.Errorf("save agent state: %w", err)
	}
	unix.Close(fd)
	if len(created) > 0 {
		rec.CreatedDirs = append(created, rec.CreatedDirs...)
		if data, err = json.MarshalIndent(rec, "", "  "); err != nil {
			return err
		}
	}
	data = append(data, '\n')
	if err := s.root.WriteBytes(Path, data, fsroot.WriteOptions{Mode: 0o600}); err != nil {
		return fmt.Errorf("save agent state: %w", err)
	}
	return nil
}

// AddOnce appends v to list unless it is there already.
func AddOnce(list []string, v string) []string {
	if slices.Contains(list, v) {
		return list
	}
	return append(list, v)
}
