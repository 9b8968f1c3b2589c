-- An acute respiratory infection diagnosed within a year of an outpatient visit.
-- outcome_concepts: 40481087 4112343 260139 28060 372328 4283893 4294548 255848
--
-- Target cohort: every person with an outpatient visit (visit_concept_id 9202) in 2010-2016; the
-- index date is the day after their first such visit.
-- Outcome: a condition of an acute respiratory infection in the 365 days from the index date: viral
-- sinusitis (40481087), acute viral pharyngitis (4112343), acute bronchitis (260139), streptococcal
-- sore throat (28060), otitis media (372328), sinusitis (4283893), acute bacterial sinusitis
-- (4294548), pneumonia (255848): the commonest reason for a primary-care visit. Chronic sinusitis and
-- emphysematous bronchitis are not infections of the year and are left out.
-- The columns a cohort SQL returns, @cdm_schema, and why the outcome is a LEFT JOIN + GROUP BY: see
-- er_visit_within_365_days.sql.
WITH index_visit AS (
    SELECT person_id, MIN(visit_start_date) AS visit_date
    FROM @cdm_schema.visit_occurrence
    WHERE visit_concept_id = 9202
      AND visit_start_date BETWEEN DATE '2010-01-01' AND DATE '2016-12-31'
    GROUP BY person_id
)
SELECT index_visit.person_id AS subject_id,
       index_visit.visit_date + 1 AS cohort_start_date,
       index_visit.visit_date + 365 AS cohort_end_date,
       MIN(infection.condition_start_date) AS outcome_date
FROM index_visit
LEFT JOIN @cdm_schema.condition_occurrence AS infection
       ON infection.person_id = index_visit.person_id
      AND infection.condition_concept_id IN (40481087, 4112343, 260139, 28060, 372328, 4283893, 4294548, 255848)
      AND infection.condition_start_date BETWEEN index_visit.visit_date + 1 AND index_visit.visit_date + 365
GROUP BY index_visit.person_id, index_visit.visit_date
