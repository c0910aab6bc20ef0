//! `label_enum!`: a closed set of Prometheus label values as an enum — the enum (indices
//! 0, 1, … in declaration order, so `value as usize` indexes counter arrays), `ALL` in that
//! order, and `as_str` for the label value, from one list.

/// Declares a label enum. Each variant is written `Name = "label_value",` with its doc comment.
macro_rules! label_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $label:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every value, in declaration (and index) order.
            pub const ALL: [$name; [$($label),+].len()] = [$(Self::$variant),+];

            /// The label value.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $label,)+
                }
            }
        }
    };
}

#[cfg(test)]
mod tests {
    label_enum! {
        /// A test set.
        enum Sample {
            /// First.
            A = "a",
            /// Second.
            B = "b_value",
        }
    }

    #[test]
    fn indices_follow_all_and_labels_follow_the_list() {
        assert_eq!(Sample::ALL, [Sample::A, Sample::B]);
        for (i, v) in Sample::ALL.into_iter().enumerate() {
            assert_eq!(v as usize, i);
        }
        assert_eq!(Sample::A.as_str(), "a");
        assert_eq!(Sample::B.as_str(), "b_value");
    }
}
