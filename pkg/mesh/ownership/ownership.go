// Package ownership marks what meshvm creates in a cluster and tells it from
// what it did not: meshvm changes and deletes only what it owns, and says
// so of the rest.
package ownership

import metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

const (
	// Label and Value mark every object meshvm creates.
	Label = "app.kubernetes.io/managed-by"
	Value = "meshvm"
	// VMLabel names the VM an object belongs to, where it belongs to one.
	VMLabel = "meshvm.io/vm"
	// FieldManager names meshvm's server-side applies.
	FieldManager = "meshvm"
)

// Action is what meshvm did to one object of a cluster, or found of it.
type Action string

const (
	Created    Action = "created"
	Updated    Action = "updated"
	Configured Action = "configured" // a server-side apply changed it
	Unchanged  Action = "unchanged"
	Deleted    Action = "deleted"
	Absent     Action = "absent" // nothing to delete
	Kept       Action = "kept"   // not deleted: others may use it
	Skipped    Action = "skipped"
	Present    Action = "present"  // a check found it
	Missing    Action = "missing"  // a check did not
	Imported   Action = "imported" // an image, into a node's containerd
	Pushed     Action = "pushed"   // an image, to a registry
	// Yours is said of an object meshvm did not create: it is used, or
	// left, as it is.
	Yours Action = "not meshvm's: left as it is"
	// Foreign is Yours of an object of Istio's install that another
	// installer made: neither applied over nor deleted.
	Foreign Action = "not meshvm's"
)

// Labels are meshvm's mark with extra labels added.
func Labels(extra map[string]string) map[string]string {
	l := map[string]string{Label: Value}
	for k, v := range extra {
		l[k] = v
	}
	return l
}

// Owned reports whether meshvm made m: it carries the mark, or meshvm
// server-side applied it (the API server records each applier; meshvm
// applied Istio's objects before it labelled them).
func Owned(m metav1.Object) bool {
	if m.GetLabels()[Label] == Value {
		return true
	}
	for _, f := range m.GetManagedFields() {
		if f.Manager == FieldManager && f.Operation == metav1.ManagedFieldsOperationApply {
			return true
		}
	}
	return false
}
