-- A first cardiometabolic diagnosis within 5 years of an outpatient visit: chronic-disease onset.
-- outcome_concepts: 201826 317576 381316 313217 436940 4329847
-- zero_shot: off, 5-year futures would cost 5 times the tokens of a 1-year task, and 8 test positives leave any method's interval too wide to read
--
-- Target cohort: every person with an outpatient visit (visit_concept_id 9202) in 2010-2016 and none
-- of the outcome's diagnoses before it; the index date is the day after their first such visit.
-- Outcome: the first type 2 diabetes (201826), coronary arteriosclerosis (317576), stroke (381316),
-- atrial fibrillation (313217), metabolic syndrome (436940) or myocardial infarction (4329847) in the
-- 1,825 days from the index date. What researchers want to predict; on the 1,130 demo persons only a
-- few dozen have it, so its intervals are wide: read them, not the point estimates.
-- Set-based: each person's first outcome diagnosis ever (first_onset, one GROUP BY) decides both.
-- A first onset on or before the index visit leaves the person out (not at risk); one after it is
-- the outcome if it falls in the time at risk. The columns a cohort SQL returns, @cdm_schema, and
-- why no subquery per person: see er_visit_within_365_days.sql.
WITH index_visit AS (
    SELECT person_id, MIN(visit_start_date) AS visit_date
    FROM @cdm_schema.visit_occurrence
    WHERE visit_concept_id = 9202
      AND visit_start_date BETWEEN DATE '2010-01-01' AND DATE '2016-12-31'
    GROUP BY person_id
),
first_onset AS (
    SELECT person_id, MIN(condition_start_date) AS onset_date
    FROM @cdm_schema.condition_occurrence
    WHERE condition_concept_id IN (201826, 317576, 381316, 313217, 436940, 4329847)
    GROUP BY person_id
)
SELECT index_visit.person_id AS subject_id,
       index_visit.visit_date + 1 AS cohort_start_date,
       index_visit.visit_date + 1825 AS cohort_end_date,
       CASE WHEN first_onset.onset_date <= index_visit.visit_date + 1825 THEN first_onset.onset_date END
           AS outcome_date
FROM index_visit
LEFT JOIN first_onset ON first_onset.person_id = index_visit.person_id
WHERE first_onset.onset_date IS NULL OR first_onset.onset_date > index_visit.visit_date
