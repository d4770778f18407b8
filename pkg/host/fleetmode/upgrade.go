package fleetmode

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"

	"github.com/meshvm/meshvm/api/meshvm/v1alpha1"
	"github.com/meshvm/meshvm/pkg/fleetstore"
	"github.com/meshvm/meshvm/pkg/host/config"
	"github.com/meshvm/meshvm/pkg/host/fleet"
	"github.com/meshvm/meshvm/pkg/host/progress"
	"github.com/meshvm/meshvm/pkg/mesh/ownership"
	"github.com/meshvm/meshvm/pkg/mesh/workload"
	"github.com/meshvm/meshvm/pkg/mesh/workloadfiles"
	"github.com/meshvm/meshvm/pkg/reason"
)

// Upgrade is vm upgrade in fleet mode: the workstation moves no VM itself
// (the controller keeps each on its MeshVM's spec.revision and would undo
// it); it sets spec.revision on parallel MeshVMs at a time and waits until
// the controller reports each Ready and UpToDate on rev, stopping at the
// first batch that is not within patience. It says how many moved. As
// without fleet mode, the WorkloadGroup carries no istio.io/rev while the
// VMs are split between revisions, and the one they share after.
func Upgrade(ctx context.Context, f *fleet.Fleet, p fleet.Reporter, names []string, rev string, parallel int, patience time.Duration) (int, error) {
	detail, err := f.Site.IstiodReady(ctx, rev)
	if err != nil {
		return 0, reason.Wrap(fmt.Errorf("istiod of revision %s is not ready (%w)", workloadfiles.RevisionName(rev), err), reason.RevisionNotReady, workloadfiles.RevisionName(rev))
	}
	p.Step(progress.ControlPlane, "", "target: istiod %s", detail)
	a, err := FromFleet(ctx, f)
	if err != nil {
		return 0, err
	}
	if err := a.knowVersion(ctx, f, rev); err != nil {
		return 0, err
	}
	ns := f.Config.Workload.Namespace
	rows, err := List(ctx, a.Dynamic, ns)
	if err != nil {
		return 0, err
	}
	revs := map[string]string{}
	var moving []string
	for _, n := range names {
		k := slices.IndexFunc(rows, func(r Row) bool { return r.Name == n })
		if k < 0 {
			return 0, reason.Wrap(fmt.Errorf("no MeshVM %s/%s", ns, n), reason.NotDeclared, n)
		}
		revs[n] = declared(rows[k])
		if workloadfiles.RevisionName(revs[n]) != workloadfiles.RevisionName(rev) {
			moving = append(moving, n)
		} else {
			p.Step(progress.Controller, n, "already declared on revision %s", workloadfiles.RevisionName(rev))
		}
	}
	group := func() error { return labelGroup(ctx, a, p, rows, revs) }
	if len(moving) > 0 {
		// Both revisions' istiods must see the group while VMs are split.
		if err := labelGroup(ctx, a, p, nil, nil); err != nil {
			return 0, err
		}
	}
	moved, from := 0, map[string]string{}
	for start := 0; start < len(moving); start += parallel {
		batch := moving[start:min(start+parallel, len(moving))]
		for _, n := range batch {
			if err := setRevision(ctx, a.Dynamic, ns, n, rev); err != nil {
				return moved, fmt.Errorf("%s: %w", n, err)
			}
			from[n], revs[n] = revs[n], rev
			p.Step(progress.Controller, n, "MeshVM spec.revision %s: the controller moves it", workloadfiles.RevisionName(rev))
		}
		wctx, cancel := context.WithTimeout(ctx, patience)
		_, err := waitRows(wctx, a.Dynamic, ns, batch, onRevision(rev), revisionNotRunning, func(vm, format string, args ...any) { p.Step(progress.Controller, vm, format, args...) })
		cancel()
		if err != nil {
			return moved, reason.Wrap(fmt.Errorf("%s not Ready on revision %s within %s (%w); the VMs after them were not moved",
				strings.Join(batch, ", "), workloadfiles.RevisionName(rev), patience, err), reason.NotBackOnRevision, strings.Join(batch, " "), workloadfiles.RevisionName(from[batch[0]]))
		}
		for _, n := range batch {
			p.Step(progress.Controller, n, "Ready on revision %s", workloadfiles.RevisionName(rev))
		}
		moved += len(batch)
	}
	return moved, group()
}

// declared is the revision a row's MeshVM declares ("" the default); one
// that declares none is on the one its status reports.
func declared(r Row) string {
	if r.SpecRevision != "" {
		return r.SpecRevision
	}
	if r.Revision == "default" {
		return ""
	}
	return r.Revision
}

// onRevision says a MeshVM is on rev: its UpToDate condition True for its
// current generation (Ready is awaited with it).
func onRevision(rev string) func(Row) bool {
	return func(r Row) bool {
		c := meta.FindStatusCondition(r.Conditions, v1alpha1.ConditionUpToDate)
		return c != nil && c.Status == metav1.ConditionTrue && c.ObservedGeneration == r.Generation &&
			workloadfiles.RevisionName(declared(r)) == workloadfiles.RevisionName(rev)
	}
}

// revisionNotRunning is the controller's word that no istiod runs the
// revision a MeshVM's current generation declares: waiting would not help.
func revisionNotRunning(r Row) error {
	c := meta.FindStatusCondition(r.Conditions, v1alpha1.ConditionUpToDate)
	if c != nil && c.ObservedGeneration == r.Generation && c.Reason == "RevisionNotRunning" {
		return errors.New(c.Message)
	}
	return nil
}

// setRevision patches VM name's MeshVM's spec.revision ("" removes it: the
// default revision).
func setRevision(ctx context.Context, dc dynamic.Interface, ns, name, rev string) error {
	var value any
	if rev != "" {
		value = rev
	}
	b, err := json.Marshal(map[string]any{"spec": map[string]any{"revision": value}})
	if err != nil {
		return err
	}
	return patchOurs(ctx, dc, ns, name, b)
}

// knowVersion has the fleet settings carry the version of rev's istiod
// where the controller cannot ask it (the lab's istiods are processes).
func (a Adoption) knowVersion(ctx context.Context, f *fleet.Fleet, rev string) error {
	if f.Config.Cluster.Provider != config.Lab {
		return nil
	}
	v, _, err := f.Site.IstiodVersion(ctx, rev)
	if err != nil {
		return err
	}
	s, err := fleetstore.LoadSettings(ctx, a.Clients.Kube, a.Namespace)
	if err != nil {
		return err
	}
	if s.IstiodVersions[workloadfiles.RevisionName(rev)] == v {
		return nil
	}
	if s.IstiodVersions == nil {
		s.IstiodVersions = map[string]string{}
	}
	s.IstiodVersions[workloadfiles.RevisionName(rev)] = v
	_, err = fleetstore.PutSettings(ctx, a.Clients.Kube, a.Namespace, s)
	return err
}

// labelGroup gives the WorkloadGroup the istio.io/rev every MeshVM of its
// namespace declares (revs overriding rows), none when they differ or
// revs is nil: then every revision's istiod serves it.
func labelGroup(ctx context.Context, a Adoption, p fleet.Reporter, rows []Row, revs map[string]string) error {
	spec := a.Workload
	spec.Revision = ""
	if revs != nil {
		seen := map[string]bool{}
		for _, r := range rows {
			rev, ok := revs[r.Name]
			if !ok {
				rev = declared(r)
			}
			seen[workloadfiles.RevisionName(rev)] = true
		}
		if len(seen) == 1 {
			for r := range seen {
				spec.Revision = r
			}
		}
	}
	changes, err := workload.Ensure(ctx, a.Clients, spec)
	for _, ch := range changes {
		if ch.Action == ownership.Unchanged {
			continue
		}
		what := "istio.io/rev " + spec.Revision
		if spec.Revision == "" {
			what = "no istio.io/rev: every revision's istiod serves it"
		}
		p.Step(progress.Workload, "", "%s %s (%s)", ch.Object, ch.Action, what)
	}
	return err
}
