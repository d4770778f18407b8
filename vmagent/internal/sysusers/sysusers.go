// Package sysusers looks up and creates system users and groups below a root.
//
// Creation goes through the distribution's own shadow tools (groupadd,
// useradd, userdel, groupdel): they take the password-file locks, honour
// login.defs and keep SELinux labels. For a root other than "/" they run with
// --prefix, so a sandbox tree is changed and the host's files are not.
package sysusers

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os/exec"
	"strconv"
	"strings"

	"github.com/meshvm/meshvm/pkg/fsroot"
)

// User is an entry of /etc/passwd.
type User struct {
	Name  string
	UID   int
	GID   int
	Home  string
	Shell string
}

// Group is an entry of /etc/group.
type Group struct {
	Name string
	GID  int
}

// DB reads and changes the account files of one root.
type DB struct {
	root *fsroot.Root
	// LookPath finds the shadow tools; tests may point it elsewhere.
	LookPath func(string) (string, error)
}

// New returns a DB for root.
func New(root *fsroot.Root) *DB { return &DB{root: root, LookPath: exec.LookPath} }

// LookupUser finds name in /etc/passwd; ok is false when it is absent.
func (db *DB) LookupUser(name string) (u User, ok bool, err error) {
	err = db.scan("/etc/passwd", 7, func(f []string) bool {
		if f[0] != name {
			return false
		}
		uid, e1 := strconv.Atoi(f[2])
		gid, e2 := strconv.Atoi(f[3])
		if e1 != nil || e2 != nil {
			err = fmt.Errorf("/etc/passwd: bad uid or gid for %s", name)
			return true
		}
		u, ok = User{Name: f[0], UID: uid, GID: gid, Home: f[5], Shell: f[6]}, true
		return true
	})
	return u, ok, err
}

// LookupGroup finds name in /etc/group; ok is false when it is absent.
func (db *DB) LookupGroup(name string) (g Group, ok bool, err error) {
	err = db.scan("/etc/group", 4, func(f []string) bool {
		if f[0] != name {
			return false
		}
		gid, e := strconv.Atoi(f[2])
		if e != nil {
			err = fmt.Errorf("/etc/group: bad gid for %s", name)
			return true
		}
		g, ok = Group{Name: f[0], GID: gid}, true
		return true
	})
	return g, ok, err
}

// scan calls fn with the colon-separated fields of each line until it returns true.
func (db *DB) scan(file string, fields int, fn func([]string) bool) error {
	data, err := db.root.ReadFile(file)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Split(line, ":")
		if len(f) < fields {
			continue
		}
		if fn(f) {
			return nil
		}
	}
	return sc.Err()
}

// UserName returns the name of uid, or the number when it has none.
func (db *DB) UserName(uid int) string {
	name := strconv.Itoa(uid)
	db.scan("/etc/passwd", 7, func(f []string) bool {
		if f[2] == name {
			name = f[0]
			return true
		}
		return false
	})
	return name
}

// GroupName returns the name of gid, or the number when it has none.
func (db *DB) GroupName(gid int) string {
	name := strconv.Itoa(gid)
	db.scan("/etc/group", 4, func(f []string) bool {
		if f[2] == name {
			name = f[0]
			return true
		}
		return false
	})
	return name
}

// UserID resolves a user name, or a number, to a uid.
func (db *DB) UserID(name string) (int, error) {
	if n, err := strconv.Atoi(name); err == nil {
		return n, nil
	}
	u, ok, err := db.LookupUser(name)
	if err != nil {
		return 0, err
	}
	if !ok {
		return 0, fmt.Errorf("user %q does not exist: run Install first", name)
	}
	return u.UID, nil
}

// GroupID resolves a group name, or a number, to a gid.
func (db *DB) GroupID(name string) (int, error) {
	if n, err := strconv.Atoi(name); err == nil {
		return n, nil
	}
	g, ok, err := db.LookupGroup(name)
	if err != nil {
		return 0, err
	}
	if !ok {
		return 0, fmt.Errorf("group %q does not exist: run Install first", name)
	}
	return g.GID, nil
}

// CreateGroup adds a system group.
func (db *DB) CreateGroup(ctx context.Context, name string) error {
	return db.run(ctx, "groupadd", "--system", name)
}

// CreateUser adds a system user with primary group group, home home (not
// created) and a shell that refuses logins.
func (db *DB) CreateUser(ctx context.Context, name, group, home string) error {
	return db.run(ctx, "useradd", "--system", "--gid", group, "--home-dir", home,
		"--no-create-home", "--shell", db.nologin(), "--comment", "Istio sidecar (managed by vmagent)", name)
}

// DeleteUser removes a user (not its home).
func (db *DB) DeleteUser(ctx context.Context, name string) error {
	return db.run(ctx, "userdel", name)
}

// DeleteGroup removes a group.
func (db *DB) DeleteGroup(ctx context.Context, name string) error {
	return db.run(ctx, "groupdel", name)
}

func (db *DB) nologin() string {
	for _, p := range []string{"/usr/sbin/nologin", "/sbin/nologin"} {
		if _, err := db.root.Stat(p); err == nil {
			return p
		}
	}
	return "/bin/false"
}

func (db *DB) run(ctx context.Context, tool string, args ...string) error {
	bin, err := db.LookPath(tool)
	if err != nil {
		return fmt.Errorf("%s not found: install the passwd package (Debian, Ubuntu) or shadow-utils (RHEL, Fedora)", tool)
	}
	if db.root.Dir() != "/" {
		args = append([]string{"--prefix", db.root.Dir()}, args...)
	}
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", tool, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
