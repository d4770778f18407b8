package ownership

import (
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestOwned(t *testing.T) {
	for _, tc := range []struct {
		name string
		m    metav1.ObjectMeta
		want bool
	}{
		{"labelled", metav1.ObjectMeta{Labels: Labels(map[string]string{"app": "x"})}, true},
		{"applied by meshvm, no label", metav1.ObjectMeta{ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "meshvm", Operation: metav1.ManagedFieldsOperationApply}}}, true},
		{"updated by something named meshvm", metav1.ObjectMeta{ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "meshvm", Operation: metav1.ManagedFieldsOperationUpdate}}}, false},
		{"applied by helm", metav1.ObjectMeta{ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "helm", Operation: metav1.ManagedFieldsOperationApply}}}, false},
		{"another manager's label", metav1.ObjectMeta{Labels: map[string]string{Label: "Helm"}}, false},
		{"nothing", metav1.ObjectMeta{}, false},
	} {
		if got := Owned(&tc.m); got != tc.want {
			t.Errorf("%s: got %v, want %v", tc.name, got, tc.want)
		}
	}
}
