//! Enums whose variants index arrays of counters.

/// Defines a fieldless enum and, from the same list of variants, `ALL` (every variant, in
/// declaration order) and `index()` (the variant's position in `ALL`). One list: a variant
/// cannot be added without its counter.
macro_rules! indexed_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $(
                $(#[$variant_meta:meta])*
                $variant:ident,
            )+
        }
    ) => {
        $(#[$meta])*
        $vis enum $name {
            $(
                $(#[$variant_meta])*
                $variant,
            )+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub(crate) const ALL: [$name; [$(stringify!($variant)),+].len()] =
                [$($name::$variant),+];

            /// The variant's position in `ALL`: its discriminant, since the enum is fieldless
            /// and declares no discriminants.
            pub(crate) const fn index(self) -> usize {
                self as usize
            }
        }
    };
}

pub(crate) use indexed_enum;
