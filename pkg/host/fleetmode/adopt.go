// Package fleetmode is hostctl's side of fleet mode: it carries a state
// directory's VMs into the cluster once (the agent CA, each VM's records,
// the fleet settings, a MeshVM per VM), after which the controller keeps
// them in the mesh; the VMs keep running and nothing is reinstalled.
package fleetmode

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"sigs.k8s.io/yaml"

	"github.com/meshvm/meshvm/api/meshvm/crd"
	"github.com/meshvm/meshvm/api/meshvm/v1alpha1"
	"github.com/meshvm/meshvm/pkg/fleetstore"
	"github.com/meshvm/meshvm/pkg/host/statedir"
	"github.com/meshvm/meshvm/pkg/host/vmcore"
	"github.com/meshvm/meshvm/pkg/mesh/ownership"
	"github.com/meshvm/meshvm/pkg/mesh/workload"
)

var (
	crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	// MeshVMs is the MeshVM resource.
	MeshVMs = v1alpha1.GroupVersion.WithResource("meshvms")
)

// Change is one object's fate, as up reports the workload's.
type Change = workload.Change

// VM is one VM of the config as fleet mode declares it.
type VM struct {
	Name    string
	RunsApp bool
	// IstiodAddress is where this VM reaches istiod, when it is its own
	// (the lab's); "" for the settings'.
	IstiodAddress string
}

// Adoption is what adopt carries into the cluster.
type Adoption struct {
	Clients workload.Clients
	Dynamic dynamic.Interface
	// Namespace is the store's (meshvm-system).
	Namespace string
	State     *statedir.Dir
	// Workload names the VMs' namespace and WorkloadGroup.
	Workload                           workload.Spec
	VMs                                []VM
	TokenLifetime, CertificateLifetime time.Duration
	Settings                           fleetstore.Settings
}

// Adopt applies the MeshVM CRD and writes the store, the settings and one
// MeshVM per onboarded VM, each only where it is missing or differs: run
// again, it changes nothing. A VM never onboarded (no address kept) is
// skipped, saying so; a MeshVM already there is left as it is.
func Adopt(ctx context.Context, a Adoption) ([]workload.Change, error) {
	out, err := a.ensureBase(ctx)
	if err != nil {
		return out, err
	}
	add := func(obj string, action ownership.Action) {
		out = append(out, workload.Change{Object: obj, Action: action})
	}
	var action ownership.Action
	store := fleetstore.New(ctx, a.Clients.Kube, a.Namespace, a.Workload.Namespace)
	dir := vmcore.DirStore{Dir: a.State}
	for _, vm := range a.VMs {
		rec, err := records(dir, a.State, vm.Name)
		if err != nil {
			return out, fmt.Errorf("%s: %w", vm.Name, err)
		}
		if rec.Address == "" {
			add("VM "+vm.Name+" (never onboarded: no address kept)", ownership.Skipped)
			continue
		}
		if action, err = store.Put(vm.Name, rec); err != nil {
			return out, err
		}
		add("Secret "+a.Namespace+"/"+fleetstore.RecordName(a.Workload.Namespace, vm.Name), action)
		revision := ""
		if rec.Joined != nil && rec.Joined.Revision != "default" {
			revision = rec.Joined.Revision
		}
		if action, err = a.declare(ctx, vm, rec.Address, revision); err != nil {
			return out, fmt.Errorf("%s: %w", vm.Name, err)
		}
		add("MeshVM "+a.Workload.Namespace+"/"+vm.Name, action)
	}
	return out, nil
}

// ensureBase writes what every VM's records rest on, each only where
// missing or different: the store's namespace, the MeshVM CRD, the agent
// CA (this state directory's: the agents pin it) and the settings.
func (a Adoption) ensureBase(ctx context.Context) ([]workload.Change, error) {
	var out []workload.Change
	add := func(obj string, action ownership.Action) {
		out = append(out, workload.Change{Object: obj, Action: action})
	}
	if err := fleetstore.EnsureNamespace(ctx, a.Clients.Kube, a.Namespace); err != nil {
		return out, fmt.Errorf("namespace %s: %w", a.Namespace, err)
	}
	action, err := ApplyCRD(ctx, a.Dynamic)
	if err != nil {
		return out, err
	}
	add("CustomResourceDefinition meshvms.meshvm.io", action)
	ca, err := a.State.AgentCA()
	if err != nil {
		return out, err
	}
	if action, err = fleetstore.PutCA(ctx, a.Clients.Kube, a.Namespace, ca); err != nil {
		return out, err
	}
	add("Secret "+a.Namespace+"/"+fleetstore.CASecret, action)
	if action, err = fleetstore.PutSettings(ctx, a.Clients.Kube, a.Namespace, a.Settings); err != nil {
		return out, err
	}
	add("ConfigMap "+a.Namespace+"/"+fleetstore.SettingsConfigMap, action)
	return out, nil
}

// records reads VM vm's records from the state directory.
func records(dir vmcore.DirStore, state *statedir.Dir, vm string) (fleetstore.Records, error) {
	var r fleetstore.Records
	var err error
	if r.Address, err = dir.Address(vm); err != nil || r.Address == "" {
		return r, err
	}
	if j, ok, err := dir.Joined(vm); err != nil {
		return r, err
	} else if ok {
		r.Joined = &j
	}
	if rs, ok, err := dir.LastRestart(vm); err != nil {
		return r, err
	} else if ok {
		r.Restart = &rs
	}
	r.Files = map[string][]byte{}
	for _, name := range []string{"istio-token", "cluster.env", "mesh.yaml", "hosts", "root-cert.pem"} {
		if b, err := optional(state, filepath.Join("vms", vm, "files", name)); err != nil {
			return r, err
		} else if len(b) > 0 {
			r.Files[name] = b
		}
	}
	if r.AgentCert, err = optional(state, filepath.Join("vms", vm, "agent.pem")); err != nil {
		return r, err
	}
	r.AgentKey, err = optional(state, filepath.Join("vms", vm, "agent-key.pem"))
	return r, err
}

func optional(state *statedir.Dir, rel string) ([]byte, error) {
	b, err := state.ReadFile(rel)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	return b, err
}

// declare creates VM vm's MeshVM unless one is there.
func (a Adoption) declare(ctx context.Context, vm VM, addr, revision string) (ownership.Action, error) {
	m := MeshVM(vm, a.Workload, addr, revision, a.TokenLifetime, a.CertificateLifetime)
	obj, err := runtime.DefaultUnstructuredConverter.ToUnstructured(m)
	if err != nil {
		return "", err
	}
	_, err = a.Dynamic.Resource(MeshVMs).Namespace(m.Namespace).Create(ctx, &unstructured.Unstructured{Object: obj}, metav1.CreateOptions{FieldManager: ownership.FieldManager})
	if apierrors.IsAlreadyExists(err) {
		return ownership.Unchanged, nil
	}
	return ownership.Created, err
}

// MeshVM is the declaration of VM vm.
func MeshVM(vm VM, w workload.Spec, addr, revision string, token, cert time.Duration) *v1alpha1.MeshVM {
	app := vm.RunsApp
	m := &v1alpha1.MeshVM{
		TypeMeta: metav1.TypeMeta{APIVersion: v1alpha1.GroupVersion.String(), Kind: "MeshVM"},
		// The controller's finalizer from the start: it would add it
		// with a write of its own.
		ObjectMeta: metav1.ObjectMeta{Name: vm.Name, Namespace: w.Namespace, Labels: ownership.Labels(nil), Finalizers: []string{v1alpha1.Finalizer}},
		Spec:       v1alpha1.MeshVMSpec{Address: addr, WorkloadGroup: w.Group, Network: w.Network, Revision: revision, App: &app},
	}
	if vm.IstiodAddress != "" {
		m.Annotations = map[string]string{v1alpha1.AnnotationIstiodAddress: vm.IstiodAddress}
	}
	if token > 0 {
		m.Spec.TokenLifetime = &metav1.Duration{Duration: token}
	}
	if cert > 0 {
		m.Spec.CertificateLifetime = &metav1.Duration{Duration: cert}
	}
	return m
}

// ApplyCRD applies the MeshVM CRD (server-side, as meshvm) and waits until
// the API server serves it; it says whether it changed.
func ApplyCRD(ctx context.Context, dc dynamic.Interface) (ownership.Action, error) {
	var obj unstructured.Unstructured
	if err := yaml.Unmarshal(crd.MeshVMs, &obj.Object); err != nil {
		return "", err
	}
	labels := obj.GetLabels()
	if labels == nil {
		labels = map[string]string{}
	}
	labels[ownership.Label] = ownership.Value
	obj.SetLabels(labels)
	api := dc.Resource(crdGVR)
	before, err := api.Get(ctx, obj.GetName(), metav1.GetOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return "", fmt.Errorf("CustomResourceDefinition %s: %w", obj.GetName(), err)
	}
	force := true
	after, err := api.Apply(ctx, obj.GetName(), &obj, metav1.ApplyOptions{FieldManager: ownership.FieldManager, Force: force})
	if err != nil {
		return "", fmt.Errorf("apply CustomResourceDefinition %s: %w", obj.GetName(), err)
	}
	changed := ownership.Unchanged
	switch {
	case before == nil:
		changed = ownership.Created
	case before.GetResourceVersion() != after.GetResourceVersion():
		changed = ownership.Configured
	}
	deadline := time.Now().Add(30 * time.Second)
	for !established(after) {
		if time.Now().After(deadline) {
			return changed, fmt.Errorf("CustomResourceDefinition %s not established after 30s", obj.GetName())
		}
		select {
		case <-ctx.Done():
			return changed, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
		if after, err = api.Get(ctx, obj.GetName(), metav1.GetOptions{}); err != nil {
			return changed, err
		}
	}
	return changed, nil
}

func established(o *unstructured.Unstructured) bool {
	conds, _, _ := unstructured.NestedSlice(o.Object, "status", "conditions")
	for _, c := range conds {
		m, _ := c.(map[string]any)
		if m["type"] == "Established" && m["status"] == "True" {
			return true
		}
	}
	return false
}
