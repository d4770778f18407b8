package postinst

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os/exec"
	"slices"
	"strings"

	"github.com/meshvm/meshvm/pkg/fsroot"
	"github.com/meshvm/meshvm/vmagent/internal/agentstate"
	"github.com/meshvm/meshvm/vmagent/internal/hostsfile"
)

// Uninstall reverts what Install and file delivery recorded, newest first:
// the unit, the capture rules, the hosts block, delivered files, directories
// and links it created, owners and modes it changed, and the user and group
// when it created them. Nothing it did not create is removed.
func (in *Installer) Uninstall(ctx context.Context, dryRun bool) []Result {
	rec, err := in.opts.State.Load()
	if err != nil {
		return []Result{{Name: "state", Outcome: Failed, Detail: err.Error()}}
	}
	r := &run{ctx: ctx, dry: dryRun, record: func(fn func(*agentstate.Record)) { fn(&rec) }}
	steps := []step{
		{"unit", (*Installer).removeUnit},
		{"iptables", (*Installer).cleanIptables},
		{"hosts", (*Installer).removeHostsBlock},
		{"files", (*Installer).removeFiles},
		{"owners", (*Installer).restoreOwners},
		{"links", (*Installer).removeLinks},
		{"directories", (*Installer).removeDirs},
		{"user", (*Installer).removeUser},
		{"group", (*Installer).removeGroup},
	}
	// The record keeps what a failed step left, for a retry.
	out := in.runSteps(r, steps, true)
	if dryRun {
		return out
	}
	if AnyFailed(out) {
		if err := in.opts.State.Update(true, func(cur *agentstate.Record) error { *cur = rec; return nil }); err != nil {
			out = append(out, Result{Name: "state", Outcome: Failed, Detail: err.Error()})
		}
		return out
	}
	if err := in.opts.State.Remove(); err != nil {
		out = append(out, Result{Name: "state", Outcome: Failed, Detail: err.Error()})
	}
	return out
}

func (in *Installer) removeUnit(r *run) (Outcome, string, error) {
	var changes []string
	rec := in.recordOf(r)
	for _, p := range []string{UnitLink, UnitPath} {
		if !slices.Contains(rec.CreatedLinks, p) && !slices.Contains(rec.Files, p) {
			continue
		}
		changes = append(changes, "remove "+p)
		if r.dry {
			continue
		}
		if err := in.opts.Root.Remove(p); err != nil {
			return 0, "", err
		}
		r.record(func(rec *agentstate.Record) {
			rec.CreatedLinks = without(rec.CreatedLinks, p)
			rec.Files = without(rec.Files, p)
		})
	}
	if len(changes) == 0 {
		return Skipped, "no unit was installed", nil
	}
	if !r.dry {
		changes = append(changes, in.reload(r.ctx))
	}
	return Changed, strings.Join(changes, "; "), nil
}

// cleanIptables removes the capture rules through pilot-agent, as the
// package's `istio-start.sh clean` does. Only on the real root: rules live in
// the kernel, not below a sandbox directory.
func (in *Installer) cleanIptables(r *run) (Outcome, string, error) {
	if in.opts.Root.Dir() != "/" {
		return Skipped, "capture rules are per network namespace, not per root directory", nil
	}
	const agent = "/usr/local/bin/pilot-agent"
	if _, err := in.opts.Root.Stat(agent); err != nil {
		return Skipped, "pilot-agent is not installed, so it installed no rules", nil
	}
	if r.dry {
		return Changed, "run pilot-agent istio-iptables --cleanup-only", nil
	}
	out, err := exec.CommandContext(r.ctx, agent, "istio-iptables", "--cleanup-only").CombinedOutput()
	if err != nil {
		return 0, "", fmt.Errorf("pilot-agent istio-iptables --cleanup-only: %w: %s", err, lastLine(out))
	}
	return Changed, "capture rules removed", nil
}

func (in *Installer) removeHostsBlock(r *run) (Outcome, string, error) {
	content, err := in.opts.Root.ReadFile(hostsPath)
	if errors.Is(err, fs.ErrNotExist) {
		return Skipped, hostsPath + " does not exist", nil
	}
	if err != nil {
		return 0, "", err
	}
	r.record(func(rec *agentstate.Record) { rec.Hosts = nil })
	cleaned := hostsfile.Remove(content)
	if string(cleaned) == string(content) {
		return Unchanged, "no managed block in " + hostsPath, nil
	}
	if !r.dry {
		if err := in.writeKeepingMode(hostsPath, cleaned, 0o644); err != nil {
			return 0, "", err
		}
	}
	return Changed, "removed the managed block; other lines kept", nil
}

func (in *Installer) removeFiles(r *run) (Outcome, string, error) {
	return in.removeRecorded(r, in.recordOf(r).Files, "no files were delivered",
		func(rec *agentstate.Record, p string) { rec.Files = without(rec.Files, p) })
}

func (in *Installer) restoreOwners(r *run) (Outcome, string, error) {
	chowned := in.recordOf(r).Chowned
	if len(chowned) == 0 {
		return Skipped, "no owners or modes were changed", nil
	}
	var done []string
	for p, prior := range chowned {
		if _, err := in.opts.Root.Chown(p, prior.UID, prior.GID, fsroot.FileMode(prior.Mode), r.dry); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return 0, "", err
		}
		done = append(done, p)
		if !r.dry {
			r.record(func(rec *agentstate.Record) { delete(rec.Chowned, p) })
		}
	}
	slices.Sort(done)
	return Changed, "restored owner and mode of " + strings.Join(done, ", "), nil
}

func (in *Installer) removeLinks(r *run) (Outcome, string, error) {
	return in.removeRecorded(r, in.recordOf(r).CreatedLinks, "no links were created",
		func(rec *agentstate.Record, p string) { rec.CreatedLinks = without(rec.CreatedLinks, p) })
}

// removeRecorded removes each recorded path and drops it from the record.
func (in *Installer) removeRecorded(r *run, paths []string, none string, drop func(*agentstate.Record, string)) (Outcome, string, error) {
	if len(paths) == 0 {
		return Skipped, none, nil
	}
	for _, p := range paths {
		if r.dry {
			continue
		}
		if err := in.opts.Root.Remove(p); err != nil {
			return 0, "", err
		}
		r.record(func(rec *agentstate.Record) { drop(rec, p) })
	}
	return Changed, "removed " + strings.Join(paths, ", "), nil
}

// removeDirs removes the directories Install created, deepest first, with
// what pilot-agent wrote in them (certificates, logs, bootstrap).
func (in *Installer) removeDirs(r *run) (Outcome, string, error) {
	created := in.recordOf(r).CreatedDirs
	if len(created) == 0 {
		return Skipped, "no directories were created", nil
	}
	order := slices.Clone(created)
	slices.SortFunc(order, func(a, b string) int { return strings.Count(b, "/") - strings.Count(a, "/") })
	for _, p := range order {
		if r.dry {
			continue
		}
		if err := in.opts.Root.RemoveAll(p); err != nil {
			return 0, "", err
		}
		r.record(func(rec *agentstate.Record) { rec.CreatedDirs = without(rec.CreatedDirs, p) })
	}
	return Changed, "removed " + strings.Join(order, ", "), nil
}

func (in *Installer) removeUser(r *run) (Outcome, string, error) {
	if !in.recordOf(r).CreatedUser {
		return Skipped, "the user " + proxyUser + " was not created by vmagent; kept", nil
	}
	if _, ok, err := in.opts.Users.LookupUser(proxyUser); err != nil {
		return 0, "", err
	} else if !ok {
		r.record(func(rec *agentstate.Record) { rec.CreatedUser = false })
		return Unchanged, "user " + proxyUser + " is already gone", nil
	}
	if !r.dry {
		if err := in.opts.Users.DeleteUser(r.ctx, proxyUser); err != nil {
			return 0, "", err
		}
		r.record(func(rec *agentstate.Record) { rec.CreatedUser = false })
	}
	return Changed, "removed user " + proxyUser, nil
}

func (in *Installer) removeGroup(r *run) (Outcome, string, error) {
	if !in.recordOf(r).CreatedGroup {
		return Skipped, "the group " + proxyUser + " was not created by vmagent; kept", nil
	}
	if _, ok, err := in.opts.Users.LookupGroup(proxyUser); err != nil {
		return 0, "", err
	} else if !ok {
		// userdel removes a user's own group where login.defs has USERGROUPS_ENAB.
		r.record(func(rec *agentstate.Record) { rec.CreatedGroup = false })
		return Unchanged, "group " + proxyUser + " already went with the user", nil
	}
	if !r.dry {
		if err := in.opts.Users.DeleteGroup(r.ctx, proxyUser); err != nil {
			return 0, "", err
		}
		r.record(func(rec *agentstate.Record) { rec.CreatedGroup = false })
	}
	return Changed, "removed group " + proxyUser, nil
}

// recordOf reads the in-memory record the uninstall run works on.
func (in *Installer) recordOf(r *run) agentstate.Record {
	var out agentstate.Record
	r.record(func(rec *agentstate.Record) { out = *rec })
	return out
}

func without(list []string, v string) []string {
	return slices.DeleteFunc(slices.Clone(list), func(s string) bool { return s == v })
}

func lastLine(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return lines[len(lines)-1]
}

func closeFD(fd int) { fsroot.CloseFD(fd) }
